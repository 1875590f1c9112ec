"""RecordGeneration with group commit: concurrent records share one INSERT and transaction.

Every insert runs the rollup triggers (migration c2e1d3b8f5a6) in its own transaction;
their cost is mostly per statement, so writers take every record waiting in the queue
and insert them with one statement. Under light load a batch is one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.requests import NewGeneration
from shared.db.engine import Database, positional, sqlstate
from shared.errors import (
    ArtistNotFound,
    DeadlineExceeded,
    NotFound,
    StylebaseError,
    Unavailable,
)
from shared.metrics import GENERATION_HISTORY_SAVES

log = logging.getLogger(__name__)

_FOREIGN_KEY_VIOLATION = "23503"

# Artists are matched by name in the statement; a record naming an unknown artist is
# simply not inserted and its caller gets NOT_FOUND. Group commit runs it alone, through
# Database.fetch: one statement is its own transaction, one round trip.
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
    RETURNING id, artist_id, created_at
"""


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new ids land at the right edge of the
    primary-key index instead of at random pages."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class Recorded:
    id: uuid.UUID
    artist_id: uuid.UUID | None
    created_at: datetime
    generation: NewGeneration


@dataclass
class _Pending:
    generation: NewGeneration
    deadline: float | None
    future: asyncio.Future[Recorded]
    id: uuid.UUID = field(default_factory=uuid7)

    def time_left(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now


class Recorder:
    """Queue plus a few writer tasks, started on first use and stopped by close()."""

    def __init__(self, db: Database, *, writers: int = 4, max_batch: int = 256) -> None:
        self._db = db
        self._writers = writers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def record(self, generation: NewGeneration, *, time_left: float | None) -> Recorded:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._writer()) for _ in range(self._writers)]
        loop = asyncio.get_running_loop()
        deadline = None if time_left is None else loop.time() + time_left
        pending = _Pending(generation, deadline, loop.create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def record_many(
        self, generations: Sequence[NewGeneration], *, time_left: float | None
    ) -> list[Recorded]:
        """A caller's own batch: one statement and one transaction of its own, all or nothing.
        It skips the queue, since it is already the group that group commit would form."""
        ids = [uuid7() for _ in generations]

        async def work(session: AsyncSession) -> list[Recorded]:
            rows = await self._insert(session, ids, generations)
            for i, (id_, generation) in enumerate(zip(ids, generations, strict=True)):
                if id_ not in rows:
                    name = generation.artist_name or ""
                    raise NotFound(
                        f"generations[{i}].artist_name: Artist '{name}' not found;"
                        " nothing was recorded",
                        reason="ARTIST_NOT_FOUND",
                        metadata={"artist_name": name, "index": str(i)},
                    )
            return [Recorded(i, *rows[i], g) for i, g in zip(ids, generations, strict=True)]

        try:
            recorded = await self._db.run(work, time_left=time_left)
        except DBAPIError as exc:
            if sqlstate(exc) == _FOREIGN_KEY_VIOLATION:
                raise NotFound(
                    "an artist named in generations was deleted while the batch was written;"
                    " nothing was recorded",
                    reason="ARTIST_NOT_FOUND",
                ) from exc
            raise
        GENERATION_HISTORY_SAVES.inc(len(recorded))
        return recorded

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._flush(batch)
            except Exception as exc:  # a writer must outlive any one batch
                log.exception("recording %d generations failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _flush(self, batch: list[_Pending]) -> None:
        now = asyncio.get_running_loop().time()
        live: list[_Pending] = []
        for item in batch:
            left = item.time_left(now)
            if item.future.done():  # the caller went away before its turn
                continue
            if left is not None and left <= 0:
                item.future.set_exception(
                    DeadlineExceeded("the deadline expired before the record was written")
                )
                continue
            live.append(item)
        if not live:
            return
        lefts = [t for t in (item.time_left(now) for item in live) if t is not None]
        params = _insert_params([item.id for item in live], [item.generation for item in live])
        try:
            result = await self._db.fetch(
                *positional(INSERT_BATCH, params), time_left=min(lefts, default=None)
            )
        except (StylebaseError, DBAPIError, asyncpg.PostgresError) as exc:
            if len(live) > 1 and not isinstance(exc, Unavailable | DeadlineExceeded):
                # One record's problem (an artist deleted meanwhile) must not fail the others.
                log.warning(
                    "a batch of %d records failed (%s); writing them one by one", len(live), exc
                )
                for item in live:
                    await self._flush([item])
                return
            error = self._error_for(live[0], exc) if len(live) == 1 else exc
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        rows = {row["id"]: (row["artist_id"], row["created_at"]) for row in result}
        GENERATION_HISTORY_SAVES.inc(len(rows))
        for item in live:
            if item.future.done():
                continue
            row = rows.get(item.id)
            if row is None:
                item.future.set_exception(ArtistNotFound(item.generation.artist_name or ""))
            else:
                item.future.set_result(Recorded(item.id, row[0], row[1], item.generation))

    @staticmethod
    def _error_for(item: _Pending, exc: BaseException) -> BaseException:
        if sqlstate(exc) == _FOREIGN_KEY_VIOLATION and item.generation.artist_name:
            return ArtistNotFound(item.generation.artist_name)
        return exc

    @staticmethod
    async def _insert(
        session: AsyncSession, ids: Sequence[uuid.UUID], generations: Sequence[NewGeneration]
    ) -> dict[uuid.UUID, tuple[uuid.UUID | None, datetime]]:
        result = await session.execute(text(INSERT_BATCH), _insert_params(ids, generations))
        return {row.id: (row.artist_id, row.created_at) for row in result}


def _insert_params(
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
