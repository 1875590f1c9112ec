"""The fast path of a large import into a nearly empty store: COPY, then one index build.

Inserting into an HNSW index costs a graph search per row; building the graph once after the
rows are in is several times cheaper. The index is dropped before the first batch and created
again afterwards from the definition PostgreSQL reported for it (pg_get_indexdef), so the name,
operator class and parameters stay those of the migration.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store import vectors
from services.profile_store.invalidation import Invalidation
from services.profile_store.validation import ProfileInput

INDEX = "ix_style_profiles_embedding"
_DEFINITION = (
    "SELECT pg_get_indexdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname = $1 AND c.relkind = 'i' AND n.nspname = current_schema()"
)
_ARTIST_COLUMNS = (
    "id",
    "name",
    "research_status",
    "last_updated",
    "sources_count",
    "confidence_score",
    "created_at",
)
_PROFILE_COLUMNS = (
    "id",
    "artist_id",
    "text_description",
    "quantitative_params",
    "midi_templates_json",
    "embedding",
    "confidence_score",
    "sources_count",
    "created_at",
    "updated_at",
    "version",
)


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection for the index work, without the pool's statement timeout: a build of
    100,000 rows takes longer than any RPC may."""
    connection: asyncpg.Connection = await asyncpg.connect(
        dsn, server_settings={"statement_timeout": "0", "application_name": "stylebase-import"}
    )
    await vectors.set_codec(connection)
    return connection


async def index_definition(connection: asyncpg.Connection) -> str | None:
    definition: str | None = await connection.fetchval(_DEFINITION, INDEX)
    return definition


async def drop_index(connection: asyncpg.Connection) -> None:
    await connection.execute(f"DROP INDEX IF EXISTS {INDEX}")


async def build_index(
    connection: asyncpg.Connection,
    definition: str,
    *,
    maintenance_work_mem: str,
    parallel_workers: int,
) -> None:
    """Create the index from its definition (unless it exists), then refresh the statistics."""
    if await index_definition(connection) is None:
        async with connection.transaction():
            # SET LOCAL: the values end with the build, whatever happens.
            await connection.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
            await connection.execute(
                f"SET LOCAL max_parallel_maintenance_workers = {int(parallel_workers)}"
            )
            await connection.execute(definition)
    await connection.execute("ANALYZE artists, style_profiles")


async def _driver(session: AsyncSession) -> asyncpg.Connection:
    """The session's asyncpg connection, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


async def copy_new(
    session: AsyncSession, items: Sequence[tuple[ProfileInput, str]]
) -> list[Invalidation]:
    """COPY artists that do not exist yet and their profiles; the session must have run a
    statement already (BEGIN goes with the first one), so the COPY is in its transaction.

    Versions come from style_profile_version_seq as every save's do. The returned
    invalidations clear negative cache entries ("no such artist") gateways may hold.
    """
    driver = await _driver(session)
    rows = await driver.fetch(
        "SELECT now() AS at, nextval('style_profile_version_seq') AS version"
        " FROM generate_series(1, $1)",
        len(items),
    )
    at = rows[0]["at"]
    artists: list[tuple[Any, ...]] = []
    profiles: list[tuple[Any, ...]] = []
    events: list[Invalidation] = []
    for (item, status), row in zip(items, rows, strict=True):
        artist_id = uuid.uuid4()
        artists.append(
            (artist_id, item.artist_name, status, at, item.sources_total, item.confidence_score, at)
        )
        profiles.append(
            (
                uuid.uuid4(),
                artist_id,
                item.text_description,
                item.params_json,
                item.midi_templates_json,
                item.embedding,
                item.confidence_score,
                item.sources_count_json,
                at,
                at,
                row["version"],
            )
        )
        events.append(Invalidation(item.artist_name, row["version"]))
    await driver.copy_records_to_table("artists", records=artists, columns=_ARTIST_COLUMNS)
    await driver.copy_records_to_table("style_profiles", records=profiles, columns=_PROFILE_COLUMNS)
    return events
