"""RecordGeneration with group commit: concurrent records share one INSERT and transaction.

Every insert runs the rollup triggers (migration c2e1d3b8f5a6) in its own transaction;
their cost is mostly per statement, so writers take every record waiting in the queue
and insert them with one statement. Under light load a batch is one record. Records with a
request_id are written by the same batches, in a transaction that also claims their ids in
the request log and stores their answers (services/analytics/keyed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Sequence

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics import keyed
from services.analytics.inserts import (
    FOREIGN_KEY_VIOLATION,
    INSERT_BATCH,
    WRITTEN,
    Pending,
    batch_time_left,
    error_for,
    insert,
    insert_params,
    resolve,
    uuid7,
)
from services.analytics.requests import NewGeneration
from services.analytics.responses import recorded
from shared.db import idempotency
from shared.db.engine import Database, positional, sqlstate
from shared.db.idempotency import Key
from shared.errors import DeadlineExceeded, NotFound, StylebaseError, Unavailable
from shared.metrics import GENERATION_HISTORY_SAVES
from stylebase.analytics.v1 import analytics_service_pb2 as pb

log = logging.getLogger(__name__)


class Recorder:
    """Queue plus a few writer tasks, started on first use and stopped by close()."""

    def __init__(self, db: Database, *, writers: int = 4, max_batch: int = 256) -> None:
        self._db = db
        self._writers = writers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._pruner = idempotency.Pruner(db)

    async def record(
        self, generation: NewGeneration, *, key: Key | None = None, time_left: float | None
    ) -> pb.RecordGenerationResponse:
        if not self._tasks:
            # A clean context: a writer serves every caller, so it must not keep the request
            # id and trace of whichever caller happened to start it.
            self._tasks = [
                asyncio.create_task(self._writer(), context=contextvars.Context())
                for _ in range(self._writers)
            ]
        loop = asyncio.get_running_loop()
        deadline = None if time_left is None else loop.time() + time_left
        pending = Pending(generation, deadline, loop.create_future(), key)
        self._queue.put_nowait(pending)
        try:
            response = await asyncio.wait_for(pending.future, time_left)
        except TimeoutError:
            raise DeadlineExceeded(
                "the deadline expired before the record was confirmed; it may have been"
                " written (send a request_id to retry safely)"
            ) from None
        if key is not None:
            self._pruner.poke()
        return response

    async def record_many(
        self,
        generations: Sequence[NewGeneration],
        *,
        key: Key | None = None,
        time_left: float | None,
    ) -> pb.BatchRecordGenerationsResponse:
        """A caller's own batch: one statement and one transaction of its own, all or nothing.
        It skips the queue, since it is already the group that group commit would form."""
        ids = [uuid7() for _ in generations]

        async def write(session: AsyncSession) -> pb.BatchRecordGenerationsResponse:
            rows = await insert(session, ids, generations)
            for i, (id_, generation) in enumerate(zip(ids, generations, strict=True)):
                if id_ not in rows:
                    name = generation.artist_name or ""
                    raise NotFound(
                        f"generations[{i}].artist_name: Artist '{name}' not found;"
                        " nothing was recorded",
                        reason="ARTIST_NOT_FOUND",
                        metadata={"artist_name": name, "index": str(i)},
                    )
            return pb.BatchRecordGenerationsResponse(
                generations=[
                    recorded(i, *rows[i], g) for i, g in zip(ids, generations, strict=True)
                ]
            )

        async def work(session: AsyncSession) -> pb.BatchRecordGenerationsResponse:
            kind = pb.BatchRecordGenerationsResponse
            return await idempotency.once(session, key, kind, lambda: write(session))

        try:
            response = await self._db.run(work, time_left=time_left)
        except DBAPIError as exc:
            if sqlstate(exc) == FOREIGN_KEY_VIOLATION:
                raise NotFound(
                    "an artist named in generations was deleted while the batch was written;"
                    " nothing was recorded",
                    reason="ARTIST_NOT_FOUND",
                ) from exc
            raise
        GENERATION_HISTORY_SAVES.inc(len(response.generations))
        if key is not None:
            self._pruner.poke()
        return response

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
                # The batch's statement runs in its first caller's context (trace, request
                # id); the writer's own context stays clean.
                await asyncio.create_task(self._flush(batch), context=batch[0].context.copy())
            except Exception as exc:  # a writer must outlive any one batch
                log.exception("recording %d generations failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _flush(self, batch: list[Pending]) -> None:
        now = asyncio.get_running_loop().time()
        live: list[Pending] = []
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
        plain = [item for item in live if item.key is None]
        if plain:
            await self._flush_plain(plain, batch_time_left(plain, now))
        with_keys = [item for item in live if item.key is not None]
        if with_keys:
            now = asyncio.get_running_loop().time()  # after the plain records' statement
            await keyed.flush(self._db, with_keys, batch_time_left(with_keys, now))

    async def _flush_plain(self, live: list[Pending], time_left: float | None) -> None:
        params = insert_params([item.id for item in live], [item.generation for item in live])
        try:
            result = await self._db.fetch(*positional(INSERT_BATCH, params), time_left=time_left)
        except (StylebaseError, DBAPIError, asyncpg.PostgresError) as exc:
            if len(live) > 1 and not isinstance(exc, Unavailable | DeadlineExceeded):
                # One record's problem (an artist deleted meanwhile) must not fail the others.
                log.warning(
                    "a batch of %d records failed (%s); writing them one by one", len(live), exc
                )
                for item in live:
                    now = asyncio.get_running_loop().time()
                    await self._flush_plain([item], item.time_left(now))
                return
            error = error_for(live[0], exc) if len(live) == 1 else exc
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        rows = {row["id"]: (row["artist_id"], row["created_at"]) for row in result}
        GENERATION_HISTORY_SAVES.inc(len(rows))
        missing = [item.id for item in live if item.id not in rows]
        if missing:  # unknown artists, or the statement re-sent after its commit went unheard
            written = positional(WRITTEN, {"ids": missing})
            found = await self._db.fetch(*written, time_left=time_left)
            rows.update({row["id"]: (row["artist_id"], row["created_at"]) for row in found})
        resolve(live, rows)
