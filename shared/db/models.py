"""SQLAlchemy 2 models of the Stylebase schema (migration a86af6571aac creates them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIM = 384
RESEARCH_STATUSES = ("pending", "researching", "cached", "failed")
SOURCE_TYPES = ("paper", "article", "audio", "midi")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Base(AsyncAttrs, DeclarativeBase):
    pass


# One sequence for every profile save and artist delete, so versions keep
# rising for a name even across a delete and re-create.
profile_version_seq = Sequence("style_profile_version_seq", metadata=Base.metadata)


class Artist(Base):
    __tablename__ = "artists"
    __table_args__ = (
        CheckConstraint(
            f"research_status IN ({_in(RESEARCH_STATUSES)})", name="ck_artists_research_status"
        ),
        CheckConstraint(
            "length(btrim(name)) BETWEEN 1 AND 255 AND name = btrim(name)",
            name="ck_artists_name_trimmed",
        ),
        CheckConstraint("confidence_score BETWEEN 0 AND 1", name="ck_artists_confidence_score"),
        CheckConstraint("sources_count >= 0", name="ck_artists_sources_count"),
        Index("ix_artists_created_at_id", "created_at", "id"),
        Index("ix_artists_research_status", "research_status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(255), unique=True, index=True, nullable=False)
    research_status: Mapped[str] = mapped_column(
        String(20), nullable=False, default="pending", server_default="pending"
    )
    last_updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    sources_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    confidence_score: Mapped[float] = mapped_column(
        Float, nullable=False, default=0.0, server_default=text("0")
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class StyleProfile(Base):
    __tablename__ = "style_profiles"
    __table_args__ = (
        CheckConstraint(
            "confidence_score BETWEEN 0 AND 1", name="ck_style_profiles_confidence_score"
        ),
        CheckConstraint("version > 0", name="ck_style_profiles_version"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artist_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("artists.id", ondelete="CASCADE"),
        unique=True,
        nullable=False,
    )
    text_description: Mapped[str] = mapped_column(Text, nullable=False)
    quantitative_params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    midi_templates_json: Mapped[list[str] | None] = mapped_column(JSONB)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))
    confidence_score: Mapped[float] = mapped_column(Float, nullable=False)
    sources_count: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    version: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("nextval('style_profile_version_seq')")
    )


class ResearchSource(Base):
    __tablename__ = "research_sources"
    __table_args__ = (
        CheckConstraint(
            f"source_type IN ({_in(SOURCE_TYPES)})", name="ck_research_sources_source_type"
        ),
        CheckConstraint("confidence BETWEEN 0 AND 1", name="ck_research_sources_confidence"),
        Index("ix_research_sources_artist_source_type", "artist_id", "source_type"),
        Index("ix_research_sources_artist_collected", "artist_id", "collected_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artist_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("artists.id", ondelete="CASCADE"), nullable=False
    )
    source_type: Mapped[str] = mapped_column(String(20), nullable=False)
    url: Mapped[str | None] = mapped_column(String(2048))
    file_path: Mapped[str | None] = mapped_column(String(1024))
    raw_content: Mapped[str | None] = mapped_column(Text)
    extracted_data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    confidence: Mapped[float] = mapped_column(
        Float, nullable=False, default=0.5, server_default=text("0.5")
    )
    collected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class GenerationHistory(Base):
    __tablename__ = "generation_history"
    __table_args__ = (
        CheckConstraint("generation_time_ms >= 0", name="ck_generation_history_time"),
        CheckConstraint("tokens_used >= 0", name="ck_generation_history_tokens"),
        CheckConstraint("cost_usd >= 0", name="ck_generation_history_cost"),
        Index("ix_generation_history_artist_created", "artist_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artist_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("artists.id", ondelete="SET NULL")
    )
    provider_used: Mapped[str] = mapped_column(String(50), nullable=False)
    generation_time_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    tokens_used: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    user_params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    output_files: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True
    )
