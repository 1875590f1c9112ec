"""The generation INSERT that group commit and batches share, and the records waiting on it."""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.requests import NewGeneration
from services.analytics.responses import recorded
from shared.db.engine import sqlstate
from shared.db.idempotency import Key
from shared.errors import ArtistNotFound
from stylebase.analytics.v1 import analytics_service_pb2 as pb

FOREIGN_KEY_VIOLATION = "23503"
# What the database gave each written record: artist id (None without an artist), created_at.
Rows = dict[uuid.UUID, tuple[uuid.UUID | None, datetime]]

# Artists are matched by name in the statement; a record naming an unknown artist is
# simply not inserted and its caller gets NOT_FOUND. Group commit runs it alone, through
# Database.fetch: one statement is its own transaction, one round trip. A statement sent
# again after it committed unheard finds its own ids and inserts nothing (see written()).
INSERT_BATCH = """
    INSERT INTO generation_history (id, artist_id, provider_used, generation_time_ms,
                                    tokens_used, cost_usd, user_params, output_files)
    SELECT v.id, a.id, v.provider, v.time_ms, v.tokens, v.cost, v.params::jsonb, v.files::jsonb
    FROM unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:providers AS text[]),
                CAST(:times AS integer[]), CAST(:tokens AS bigint[]),
                CAST(:costs AS double precision[]), CAST(:params AS text[]),
                CAST(:files AS text[]))
         AS v(id, artist_name, provider, time_ms, tokens, cost, params, files)
    LEFT JOIN artists a ON a.name = v.artist_name
    WHERE v.artist_name IS NULL OR a.id IS NOT NULL
    ON CONFLICT (id) DO NOTHING
    RETURNING id, artist_id, created_at
"""
WRITTEN = (
    "SELECT id, artist_id, created_at FROM generation_history WHERE id = ANY(CAST(:ids AS uuid[]))"
)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new ids land at the right edge of the
    primary-key index instead of at random pages."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return uuid.UUID(int=value)


@dataclass
class Pending:
    """One RecordGeneration waiting in the group-commit queue."""

    generation: NewGeneration
    deadline: float | None
    future: asyncio.Future[pb.RecordGenerationResponse]
    key: Key | None = None
    # The caller's context (request id, trace), for the statement that writes its record.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    id: uuid.UUID = field(default_factory=uuid7)

    def time_left(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now


def batch_time_left(items: Sequence[Pending], now: float) -> float | None:
    """The longest time left in a batch (None when a caller has no deadline): one caller's
    short deadline must not cancel everyone's statement. Each caller still gets
    DEADLINE_EXCEEDED at its own deadline (Recorder.record)."""
    lefts = [item.time_left(now) for item in items]
    return None if None in lefts else max(t for t in lefts if t is not None)


def insert_params(
    ids: Sequence[uuid.UUID], generations: Sequence[NewGeneration]
) -> dict[str, list[Any]]:
    return {
        "ids": list(ids),
        "names": [g.artist_name for g in generations],
        "providers": [g.provider for g in generations],
        "times": [g.generation_time_ms for g in generations],
        "tokens": [g.tokens_used for g in generations],
        "costs": [g.cost_usd for g in generations],
        "params": [g.user_params_json for g in generations],
        "files": [g.output_files_json for g in generations],
    }


async def insert(
    session: AsyncSession, ids: Sequence[uuid.UUID], generations: Sequence[NewGeneration]
) -> Rows:
    """Insert in the session's transaction; the rows of ids an earlier attempt of this very
    statement already wrote come back too (read, since the insert skipped them)."""
    result = await session.execute(text(INSERT_BATCH), insert_params(ids, generations))
    rows = {row.id: (row.artist_id, row.created_at) for row in result}
    missing = [id_ for id_ in ids if id_ not in rows]
    if missing:  # unknown artists, or a statement re-sent after its commit went unheard
        found = await session.execute(text(WRITTEN), {"ids": missing})
        rows.update({row.id: (row.artist_id, row.created_at) for row in found})
    return rows


def answer(item: Pending, row: tuple[uuid.UUID | None, datetime]) -> pb.RecordGenerationResponse:
    return pb.RecordGenerationResponse(generation=recorded(item.id, *row, item.generation))


def resolve(live: Sequence[Pending], rows: Rows) -> None:
    """Answer each caller from the written rows; a record without a row named an unknown
    artist (the statement skips those)."""
    for item in live:
        if item.future.done():
            continue
        row = rows.get(item.id)
        if row is None:
            item.future.set_exception(ArtistNotFound(item.generation.artist_name or ""))
        else:
            item.future.set_result(answer(item, row))


def error_for(item: Pending, exc: BaseException) -> BaseException:
    if sqlstate(exc) == FOREIGN_KEY_VIOLATION and item.generation.artist_name:
        return ArtistNotFound(item.generation.artist_name)
    return exc
