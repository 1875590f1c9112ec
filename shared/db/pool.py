"""The engine's pool: its connections, their check at checkout, and their retirement.

The pool's size plus overflow is a hard limit on the backends a process holds only if a
connection leaves the count once its backend is gone. SQLAlchemy's pool counts a connection
gone as soon as it is invalidated, and a connect cancelled half-way is forgotten at once, so
BackendSlots counts the backends themselves: a slot is taken before a connection is opened and
given back when the server has ended the session (it hung up after Terminate, or closed the
connection itself). A connection whose statement was cut off by a deadline or a cancelled
task is retired (close_backend): the server is asked to cancel the statement, the session is
ended with Terminate and its end awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from shared.settings import DatabaseSettings

log = logging.getLogger(__name__)
# A connection dropped locally (socket aborted, not closed by the server) keeps its slot this
# long: an idle backend notices the closed socket at once, and one that was cut off mid-
# statement already had a cancel request from asyncpg before the drop.
_DROPPED_LINGER_SECONDS = 1.0


def create_engine(
    settings: DatabaseSettings, *, application_name: str, url: str | None = None
) -> AsyncEngine:
    return create_async_engine(
        url or settings.require_database_url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Pre-ping is install_pre_ping's cheaper version: SQLAlchemy's costs three round trips.
        pool_pre_ping=False,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": application_name,
            },
        },
    )


def install_pre_ping(engine: AsyncEngine, *, idle_seconds: float) -> None:
    """Check each connection as it leaves the pool, without a round trip when it was just used.

    A connection asyncpg already knows is closed (server restart, reset socket) is replaced at
    once; one idle for idle_seconds or more must answer a one-round-trip ping first, which
    catches half-open connections. A failed check makes the pool take a fresh connection.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _checkin(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        raw = dbapi.driver_connection
        if raw.is_closed():
            raise DisconnectionError("the connection was closed while idle in the pool")
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            await_(raw.execute(";"))
        except Exception as exc:
            raise DisconnectionError(f"pre-ping failed: {exc}") from exc


async def close_backend(raw: asyncpg.Connection, *, within: float) -> None:
    """Close a driver connection once its backend is done: asyncpg first has the server cancel
    a statement still running (a cancel request on a connection of its own), then sends
    Terminate and waits for the server to hang up. Past `within` seconds (the server
    unreachable) the socket is dropped and the server is left to notice."""
    try:
        await asyncio.wait_for(raw.close(), within)
    except (Exception, asyncio.CancelledError) as exc:
        raw.terminate()
        log.warning("closing a database connection failed, dropped it: %s", exc)
        if isinstance(exc, asyncio.CancelledError):
            raise


class BackendSlots:
    """At most `limit` backends of this process at once, whatever the pool believes."""

    def __init__(self, limit: int, *, wait: float, close_within: float) -> None:
        self.limit = limit
        self._free = asyncio.Semaphore(limit)
        self._wait = wait
        self._close_within = close_within
        self._closing: set[asyncio.Task[None]] = set()

    def install(self, engine: AsyncEngine) -> None:
        @event.listens_for(engine.sync_engine, "do_connect")
        def _through_slots(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
            cparams["async_creator_fn"] = self.connect

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        try:
            async with asyncio.timeout(self._wait):
                await self._free.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"all {self.limit} database connections are in use or closing"
            ) from None
        connecting = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
        try:
            # Shielded: a caller cancelled half-way must not leave a backend nobody counts.
            conn: asyncpg.Connection = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(self._abandoned)
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        conn.add_termination_listener(self._terminated)
        return conn

    def _failed(self, exc: BaseException) -> None:
        # A connect that timed out was dropped by asyncpg, maybe with a backend in its startup;
        # one refused or answered with an error (starting up, too many clients) has none.
        if isinstance(exc, TimeoutError | asyncio.CancelledError):
            self._release_later()
        else:
            self._free.release()

    def _abandoned(self, connecting: asyncio.Future[asyncpg.Connection]) -> None:
        if connecting.cancelled():
            self._release_later()
            return
        if (error := connecting.exception()) is not None:
            self._failed(error)
            return
        conn = connecting.result()
        conn.add_termination_listener(self._terminated)
        task = asyncio.get_running_loop().create_task(
            close_backend(conn, within=self._close_within)
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _terminated(self, conn: Any) -> None:
        # asyncpg marks a connection it dropped itself; one closed gracefully or by the server
        # has no backend left.
        if getattr(conn, "_aborted", True):
            self._release_later()
        else:
            self._free.release()

    def _release_later(self) -> None:
        asyncio.get_running_loop().call_later(_DROPPED_LINGER_SECONDS, self._free.release)
