"""Client request ids (AIP-155): a write sent again with the same request_id is answered once.

A write that carries a request_id claims (rpc, request_id) in request_log as the first statement
of its transaction and stores its serialized response there before the commit, so the stored
answer exists exactly when the write committed. A repeat finds the committed row and returns
that answer without writing; a repeat racing the first call waits on the primary key until the
first commits (then reads its answer) or rolls back (then does the work itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import Database
from shared.errors import Aborted, InvalidArgument
from shared.metrics import REQUEST_LOG_REPLAYS as REPLAYS
from shared.telemetry import background_context

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

FIELD = "request_id"
REQUEST_ID_MAX = 64
# Printable ASCII without spaces: a UUID, a ULID, or any other unique token.
_REQUEST_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{REQUEST_ID_MAX}}}")
RETENTION = "24 hours"
PRUNE_BATCH = 5000
PRUNE_INTERVAL_SECONDS = 60.0
# While a round deletes a full batch the log is behind; the next round follows soon after.
PRUNE_CATCH_UP_SECONDS = 0.5


_CLAIM = text(
    f"""
    INSERT INTO request_log AS l (rpc, request_id, request_hash)
    VALUES (:rpc, :request_id, :request_hash)
    ON CONFLICT (rpc, request_id) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, response = NULL, created_at = now()
        WHERE l.created_at < now() - interval '{RETENTION}'
    RETURNING 1
    """
)
_STORED = text(
    "SELECT request_hash, response FROM request_log WHERE rpc = :rpc AND request_id = :request_id"
)
_STORE = text(
    "UPDATE request_log SET response = :response WHERE rpc = :rpc AND request_id = :request_id"
)
_CLAIM_MANY = text(
    f"""
    INSERT INTO request_log AS l (rpc, request_id, request_hash)
    SELECT :rpc, k.request_id, k.request_hash
    FROM unnest(CAST(:request_ids AS text[]), CAST(:hashes AS bytea[]))
         AS k(request_id, request_hash)
    ORDER BY k.request_id
    ON CONFLICT (rpc, request_id) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, response = NULL, created_at = now()
        WHERE l.created_at < now() - interval '{RETENTION}'
    RETURNING request_id
    """
)
_STORED_MANY = text(
    """
    SELECT request_id, request_hash, response FROM request_log
    WHERE rpc = :rpc AND request_id = ANY(CAST(:request_ids AS text[]))
    """
)
_STORE_MANY = text(
    """
    UPDATE request_log l SET response = s.response
    FROM unnest(CAST(:request_ids AS text[]), CAST(:responses AS bytea[]))
         AS s(request_id, response)
    WHERE l.rpc = :rpc AND l.request_id = s.request_id
    """
)
_RELEASE_MANY = text(
    "DELETE FROM request_log WHERE rpc = :rpc AND request_id = ANY(CAST(:request_ids AS text[]))"
)
# One statement, so it needs no session: the answer a caller got, updated after the commit.
_AMEND = "UPDATE request_log SET response = $3 WHERE rpc = $1 AND request_id = $2"
_PRUNE = f"""
    WITH gone AS (
        DELETE FROM request_log WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM request_log WHERE created_at < now() - interval '{RETENTION}'
            ORDER BY created_at LIMIT $1))
        RETURNING 1)
    SELECT count(*) AS deleted FROM gone
"""


@dataclass(frozen=True)
class Key:
    """Who a write is: its RPC (the request message's full name, one per RPC), the client's
    request_id, and the hash that tells a true repeat from a different request."""

    rpc: str
    request_id: str
    request_hash: bytes


def check_request_id(value: str, field: str = FIELD) -> str | None:
    """None for empty (no idempotency); else 1 to 64 printable ASCII characters, no spaces."""
    if not value:
        return None
    if not _REQUEST_ID_RE.fullmatch(value):
        raise InvalidArgument(
            field,
            f"must be 1 to {REQUEST_ID_MAX} printable ASCII characters without spaces"
            " (a UUID, for instance), or empty",
        )
    return value


def request_hash(request: Message, field: str = FIELD) -> bytes:
    """sha256 of the request as sent, request_id cleared (deterministic serialization, so map
    order does not matter). Hashing what the client sent, not what validation made of it,
    keeps the rule simple: the repeat of a request is the same request."""
    bare = type(request)()
    bare.CopyFrom(request)
    bare.ClearField(field)
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).digest()


def key_of(request: Message, field: str = FIELD) -> Key | None:
    """The key of a request, None when it has no request_id; a malformed id is refused."""
    request_id = check_request_id(getattr(request, field), field)
    if request_id is None:
        return None
    return Key(request.DESCRIPTOR.full_name, request_id, request_hash(request, field))


REUSED_REASON = "REQUEST_ID_REUSED"


def _mismatch(key: Key) -> InvalidArgument:
    error = InvalidArgument(
        FIELD,
        f"'{key.request_id}' was already used within {RETENTION} for a different request;"
        " a new request needs a new request_id",
    )
    # Its own reason: HTTP answers it 409, as the Idempotency-Key convention does.
    error.reason = REUSED_REASON
    return error


def _answer(key: Key, stored_hash: bytes, response: bytes | None, kind: type[M]) -> M:
    if stored_hash != key.request_hash:
        raise _mismatch(key)
    if response is None:  # only a transaction that claimed the id sees it without its answer
        raise Aborted(f"request_id '{key.request_id}' is being answered; retry")
    REPLAYS.labels(key.rpc).inc()
    message = kind()
    message.ParseFromString(response)
    return message


async def claim(session: AsyncSession, key: Key, kind: type[M]) -> M | None:
    """None: this transaction owns the id; do the work, then store() the answer. Otherwise the
    answer of the call that committed with this id (a different request is INVALID_ARGUMENT).
    Run it first in the transaction, so a concurrent repeat waits before any other lock."""
    params = {"rpc": key.rpc, "request_id": key.request_id, "request_hash": key.request_hash}
    if (await session.execute(_CLAIM, params)).first() is not None:
        return None
    row = (await session.execute(_STORED, params)).one()
    return _answer(key, row.request_hash, row.response, kind)


async def store(session: AsyncSession, key: Key, response: Message) -> None:
    """Store the answer of a claimed id, in the transaction of the write."""
    await session.execute(
        _STORE,
        {"rpc": key.rpc, "request_id": key.request_id, "response": response.SerializeToString()},
    )


async def once(
    session: AsyncSession, key: Key | None, kind: type[M], write: Callable[[], Awaitable[M]]
) -> M:
    """write() in the session's transaction, its answer stored under key; or, for a repeat of
    a committed call, that call's answer without writing. No key: write() alone."""
    if key is None:
        return await write()
    stored = await claim(session, key, kind)
    if stored is not None:
        return stored
    response = await write()
    await store(session, key, response)
    return response


async def amend(db: Database, key: Key, response: Message, *, time_left: float | None) -> None:
    """Replace a committed answer with what the caller was finally told (a fact learnt after
    the commit, such as a cache acknowledgement). Best effort: on failure the first stored
    answer stays, which is still true."""
    try:
        await db.fetch(
            _AMEND, key.rpc, key.request_id, response.SerializeToString(), time_left=time_left
        )
    except Exception:  # the write committed; its answer must not fail for this
        log.warning("could not amend the stored answer of %s %s", key.rpc, key.request_id)


async def claim_many(
    session: AsyncSession, rpc: str, keys: Sequence[Key]
) -> tuple[set[str], dict[str, tuple[bytes, bytes | None]]]:
    """claim() for many distinct request ids of one RPC in two statements: the ids this
    transaction owns, and (hash, response) of the others, committed by earlier calls."""
    params = {
        "rpc": rpc,
        "request_ids": [k.request_id for k in keys],
        "hashes": [k.request_hash for k in keys],
    }
    owned = {row.request_id for row in await session.execute(_CLAIM_MANY, params)}
    others = [k.request_id for k in keys if k.request_id not in owned]
    stored: dict[str, tuple[bytes, bytes | None]] = {}
    if others:
        rows = await session.execute(_STORED_MANY, {"rpc": rpc, "request_ids": others})
        stored = {row.request_id: (row.request_hash, row.response) for row in rows}
    return owned, stored


def answer(key: Key, stored: tuple[bytes, bytes | None], kind: type[M]) -> M:
    """The stored answer of a repeat found by claim_many (or the error it deserves)."""
    return _answer(key, stored[0], stored[1], kind)


async def store_many(
    session: AsyncSession, rpc: str, answers: Sequence[tuple[str, Message]]
) -> None:
    if answers:
        await session.execute(
            _STORE_MANY,
            {
                "rpc": rpc,
                "request_ids": [request_id for request_id, _ in answers],
                "responses": [response.SerializeToString() for _, response in answers],
            },
        )


async def release_many(session: AsyncSession, rpc: str, request_ids: Sequence[str]) -> None:
    """Give up claims whose write did not happen (e.g. an unknown artist), in the same
    transaction, so a repeat is tried again rather than answered."""
    if request_ids:
        await session.execute(_RELEASE_MANY, {"rpc": rpc, "request_ids": list(request_ids)})


class Pruner:
    """Deletes answers older than 24 h, at most PRUNE_BATCH a round, from the writes' own
    process: a round at most every minute, one soon after another while the log is behind."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._next = time.monotonic() + PRUNE_INTERVAL_SECONDS
        self._task: asyncio.Task[int] | None = None

    def poke(self) -> None:
        """Called after a write; starts a round in the background when one is due."""
        if time.monotonic() < self._next or (self._task is not None and not self._task.done()):
            return
        self._next = time.monotonic() + PRUNE_INTERVAL_SECONDS
        # A clean context: the round belongs to no caller's request id or trace; it is
        # background work (origin=background, no spans).
        self._task = asyncio.create_task(self.prune_once(), context=background_context())

    async def prune_once(self) -> int:
        try:
            rows = await self._db.fetch(_PRUNE, PRUNE_BATCH, time_left=10.0)
        except Exception:  # pruning is housekeeping; the next round tries again
            log.warning("pruning the request log failed", exc_info=True)
            return 0
        deleted = int(rows[0]["deleted"])
        if deleted >= PRUNE_BATCH:
            self._next = time.monotonic() + PRUNE_CATCH_UP_SECONDS
        return deleted
