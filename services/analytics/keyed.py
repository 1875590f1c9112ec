"""Group commit for records sent with a request_id: claims, rows and answers in one transaction.

The transaction claims the batch's request ids in the request log (a repeat of a committed
call finds its answer instead; a repeat racing an uncommitted one waits on the key), inserts
the records it claimed with the group commit's statement, gives back the claims of records
that were not written (an unknown artist), and stores the others' answers before the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.inserts import Pending, Rows, answer, error_for, insert, resolve
from shared.db import idempotency
from shared.db.engine import Database
from shared.errors import DeadlineExceeded, StylebaseError, Unavailable
from shared.metrics import GENERATION_HISTORY_SAVES
from stylebase.analytics.v1 import analytics_service_pb2 as pb

log = logging.getLogger(__name__)
RPC = pb.RecordGenerationRequest.DESCRIPTOR.full_name
_Stored = dict[str, tuple[bytes, bytes | None]]


async def flush(db: Database, items: Sequence[Pending], time_left: float | None) -> None:
    """Write items (every one has a key) and answer their callers."""
    first: dict[str, Pending] = {}
    repeats: list[Pending] = []
    for item in items:
        assert item.key is not None
        if item.key.request_id in first:
            repeats.append(item)  # answered from the log once this batch has committed
        else:
            first[item.key.request_id] = item
    await _write(db, list(first.values()), time_left)
    if repeats:
        await flush(db, repeats, time_left)


async def _write(db: Database, items: list[Pending], time_left: float | None) -> None:
    async def work(session: AsyncSession) -> tuple[list[Pending], Rows, _Stored]:
        keys = [item.key for item in items if item.key is not None]
        owned, stored = await idempotency.claim_many(session, RPC, keys)
        mine = [item for item in items if item.key is not None and item.key.request_id in owned]
        rows: Rows = {}
        if mine:
            rows = await insert(session, [i.id for i in mine], [i.generation for i in mine])
        await idempotency.release_many(
            session, RPC, [i.key.request_id for i in mine if i.key and i.id not in rows]
        )
        await idempotency.store_many(
            session,
            RPC,
            [(i.key.request_id, answer(i, rows[i.id])) for i in mine if i.key and i.id in rows],
        )
        return mine, rows, stored

    try:
        mine, rows, stored = await db.run(work, time_left=time_left)
    except (StylebaseError, DBAPIError) as exc:
        if len(items) > 1 and not isinstance(exc, Unavailable | DeadlineExceeded):
            # One record's problem (an artist deleted meanwhile) must not fail the others.
            log.warning(
                "a batch of %d records failed (%s); writing them one by one", len(items), exc
            )
            for item in items:
                await _write(db, [item], item.time_left(asyncio.get_running_loop().time()))
            return
        error = error_for(items[0], exc) if len(items) == 1 else exc
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)
        return
    GENERATION_HISTORY_SAVES.inc(len(rows))
    resolve(mine, rows)
    for item in items:
        if item.future.done() or item.key is None or item.key.request_id not in stored:
            continue
        try:
            response = idempotency.answer(
                item.key, stored[item.key.request_id], pb.RecordGenerationResponse
            )
        except StylebaseError as exc:
            item.future.set_exception(exc)
        else:
            item.future.set_result(response)
