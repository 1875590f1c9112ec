"""initial v2.0 schema

Revision ID: a86af6571aac
Revises:
Create Date: 2026-11-22
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "a86af6571aac"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'pending', 'researching', 'cached', 'failed'"
SOURCE_TYPES = "'paper', 'article', 'audio', 'midi'"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE SEQUENCE style_profile_version_seq")

    op.create_table(
        "artists",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("research_status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column(
            "last_updated", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("sources_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("confidence_score", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(f"research_status IN ({STATUSES})", name="ck_artists_research_status"),
        sa.CheckConstraint(
            "length(btrim(name)) BETWEEN 1 AND 255 AND name = btrim(name)",
            name="ck_artists_name_trimmed",
        ),
        sa.CheckConstraint("confidence_score BETWEEN 0 AND 1", name="ck_artists_confidence_score"),
        sa.CheckConstraint("sources_count >= 0", name="ck_artists_sources_count"),
    )
    op.create_index("ix_artists_name", "artists", ["name"], unique=True)
    op.create_index("ix_artists_created_at_id", "artists", ["created_at", "id"])
    op.create_index("ix_artists_research_status", "artists", ["research_status"])

    op.create_table(
        "style_profiles",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "artist_id",
            UUID(as_uuid=True),
            sa.ForeignKey("artists.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("text_description", sa.Text, nullable=False),
        sa.Column("quantitative_params", JSONB, nullable=False),
        sa.Column("midi_templates_json", JSONB),
        sa.Column("embedding", Vector(384)),
        sa.Column("confidence_score", sa.Float, nullable=False),
        sa.Column("sources_count", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column(
            "version",
            sa.BigInteger,
            nullable=False,
            server_default=sa.text("nextval('style_profile_version_seq')"),
        ),
        sa.CheckConstraint(
            "confidence_score BETWEEN 0 AND 1", name="ck_style_profiles_confidence_score"
        ),
        sa.CheckConstraint("version > 0", name="ck_style_profiles_version"),
    )
    # HNSW by default: IVFFlat built on an empty table clusters nothing and recalls poorly.
    if os.environ.get("DB_VECTOR_INDEX", "hnsw").lower() == "ivfflat":
        op.execute(
            "CREATE INDEX ix_style_profiles_embedding ON style_profiles "
            "USING ivfflat (embedding vector_cosine_ops) WITH (lists = 100)"
        )
    else:
        op.execute(
            "CREATE INDEX ix_style_profiles_embedding ON style_profiles "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )

    op.create_table(
        "research_sources",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "artist_id",
            UUID(as_uuid=True),
            sa.ForeignKey("artists.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source_type", sa.String(20), nullable=False),
        sa.Column("url", sa.String(2048)),
        sa.Column("file_path", sa.String(1024)),
        sa.Column("raw_content", sa.Text),
        sa.Column("extracted_data", JSONB),
        sa.Column("confidence", sa.Float, nullable=False, server_default=sa.text("0.5")),
        sa.Column(
            "collected_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.CheckConstraint(
            f"source_type IN ({SOURCE_TYPES})", name="ck_research_sources_source_type"
        ),
        sa.CheckConstraint("confidence BETWEEN 0 AND 1", name="ck_research_sources_confidence"),
    )
    op.create_index(
        "ix_research_sources_artist_source_type", "research_sources", ["artist_id", "source_type"]
    )
    op.create_index(
        "ix_research_sources_artist_collected",
        "research_sources",
        ["artist_id", "collected_at", "id"],
    )

    op.create_table(
        "generation_history",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "artist_id", UUID(as_uuid=True), sa.ForeignKey("artists.id", ondelete="SET NULL")
        ),
        sa.Column("provider_used", sa.String(50), nullable=False),
        sa.Column("generation_time_ms", sa.Integer, nullable=False),
        sa.Column("tokens_used", sa.BigInteger),
        sa.Column("cost_usd", sa.Float),
        sa.Column("user_params", JSONB, nullable=False),
        sa.Column("output_files", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint("generation_time_ms >= 0", name="ck_generation_history_time"),
        sa.CheckConstraint("tokens_used >= 0", name="ck_generation_history_tokens"),
        sa.CheckConstraint("cost_usd >= 0", name="ck_generation_history_cost"),
    )
    op.create_index("ix_generation_history_created_at", "generation_history", ["created_at"])
    op.create_index(
        "ix_generation_history_artist_created",
        "generation_history",
        ["artist_id", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_table("generation_history")
    op.drop_table("research_sources")
    op.drop_table("style_profiles")
    op.drop_table("artists")
    op.execute("DROP SEQUENCE IF EXISTS style_profile_version_seq")
    op.execute("DROP EXTENSION IF EXISTS vector")
