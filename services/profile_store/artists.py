"""SQL for artists and research sources: get-or-create, lookups, keyset pages, delete."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store.profiles import ARTIST_COLUMNS
from services.profile_store.validation import SourceInput
from shared import convert
from stylebase.common.v1 import common_pb2

SOURCE_COLUMNS = (
    "id, artist_id, source_type, url, file_path, raw_content, extracted_data, confidence,"
    " collected_at"
)

_CREATE = text(
    f"""
    INSERT INTO artists (id, name, research_status, created_at, last_updated)
    VALUES (gen_random_uuid(), :name, 'pending', now(), now())
    ON CONFLICT (name) DO NOTHING
    RETURNING {ARTIST_COLUMNS}
    """
)
_BY_NAME = text(f"SELECT {ARTIST_COLUMNS} FROM artists WHERE name = :name")
_BY_ID = text(f"SELECT {ARTIST_COLUMNS} FROM artists WHERE id = :id")
_SET_STATUS = text(
    f"""
    UPDATE artists SET research_status = :status, last_updated = now()
    WHERE name = :name RETURNING {ARTIST_COLUMNS}
    """
)
_LOCK_FOR_DELETE = text("SELECT id FROM artists WHERE name = :name FOR UPDATE")
_DELETE_PROFILE = text("DELETE FROM style_profiles WHERE artist_id = :id RETURNING id")
_DELETE_SOURCES = text(
    """
    WITH gone AS (DELETE FROM research_sources WHERE artist_id = :id RETURNING 1)
    SELECT count(*) FROM gone
    """
)
# generation_history keeps its rows: its foreign key sets artist_id to NULL.
_DELETE_ARTIST = text(
    "DELETE FROM artists WHERE id = :id RETURNING nextval('style_profile_version_seq')"
)
_ADD_SOURCE = text(
    f"""
    INSERT INTO research_sources (id, artist_id, source_type, url, file_path, raw_content,
                                  extracted_data, confidence, collected_at)
    VALUES (gen_random_uuid(), :artist_id, :source_type, :url, :file_path, :raw_content,
            CAST(:extracted_data AS jsonb), :confidence, clock_timestamp())
    RETURNING {SOURCE_COLUMNS}
    """
)


@dataclass(frozen=True)
class Deleted:
    artist_id: uuid.UUID
    version: int
    profile_deleted: bool
    sources_deleted: int


def source_to_proto(row: Row[Any]) -> common_pb2.ResearchSource:
    message = common_pb2.ResearchSource(
        id=str(row.id),
        artist_id=str(row.artist_id),
        source_type=convert.source_type_from_db(row.source_type),
        url=row.url or "",
        file_path=row.file_path or "",
        raw_content=row.raw_content or "",
        confidence=row.confidence,
        collected_at=convert.timestamp(row.collected_at),
    )
    if row.extracted_data is not None:
        message.extracted_data.SetInParent()
        message.extracted_data.update(row.extracted_data)
    return message


async def create(session: AsyncSession, name: str) -> Row[Any] | None:
    """The new artist, or None when one with this name already exists."""
    return (await session.execute(_CREATE, {"name": name})).first()


async def by_name(session: AsyncSession, name: str) -> Row[Any] | None:
    return (await session.execute(_BY_NAME, {"name": name})).first()


async def by_id(session: AsyncSession, artist_id: uuid.UUID) -> Row[Any] | None:
    return (await session.execute(_BY_ID, {"id": artist_id})).first()


async def page(
    session: AsyncSession,
    *,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Oldest first by (created_at, id): a row inserted later never shifts a page."""
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        where.append("research_status = :status")
        params["status"] = status
    if after is not None:
        where.append("(created_at, id) > (:after_time, :after_id)")
        params["after_time"], params["after_id"] = after
    sql = (
        f"SELECT {ARTIST_COLUMNS} FROM artists WHERE {' AND '.join(where)}"
        " ORDER BY created_at, id LIMIT :limit"
    )
    return list(await session.execute(text(sql), params))


async def set_status(session: AsyncSession, name: str, status: str) -> Row[Any] | None:
    return (await session.execute(_SET_STATUS, {"name": name, "status": status})).first()


async def delete(session: AsyncSession, name: str) -> Deleted | None:
    """Delete the artist with its profile and sources; None when there is no such artist.

    The version is drawn after the row lock, so it is above every save of this name.
    """
    artist_id = (await session.execute(_LOCK_FOR_DELETE, {"name": name})).scalar()
    if artist_id is None:
        return None
    profile = (await session.execute(_DELETE_PROFILE, {"id": artist_id})).first()
    sources = (await session.execute(_DELETE_SOURCES, {"id": artist_id})).scalar_one()
    version = (await session.execute(_DELETE_ARTIST, {"id": artist_id})).scalar_one()
    return Deleted(artist_id, version, profile is not None, sources)


async def add_source(session: AsyncSession, artist_id: uuid.UUID, item: SourceInput) -> Row[Any]:
    params = {
        "artist_id": artist_id,
        "source_type": item.source_type,
        "url": item.url,
        "file_path": item.file_path,
        "raw_content": item.raw_content,
        "extracted_data": item.extracted_data_json,
        "confidence": item.confidence,
    }
    return (await session.execute(_ADD_SOURCE, params)).one()


async def sources_page(
    session: AsyncSession,
    *,
    artist_id: uuid.UUID,
    source_type: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Newest first by (collected_at, id)."""
    where = ["artist_id = :artist_id"]
    params: dict[str, Any] = {"artist_id": artist_id, "limit": limit}
    if source_type is not None:
        where.append("source_type = :source_type")
        params["source_type"] = source_type
    if before is not None:
        where.append("(collected_at, id) < (:before_time, :before_id)")
        params["before_time"], params["before_id"] = before
    sql = (
        f"SELECT {SOURCE_COLUMNS} FROM research_sources WHERE {' AND '.join(where)}"
        " ORDER BY collected_at DESC, id DESC LIMIT :limit"
    )
    return list(await session.execute(text(sql), params))
