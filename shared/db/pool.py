"""The engine's pool: its connections, their check at checkout, and their retirement.

The pool's size plus overflow is a hard limit on the backends a process holds only if a
connection leaves the pool's count once its backend is gone. A connection whose statement
was cut off by a deadline or a cancelled task is retired: the server is asked to cancel the
statement, the session is ended with Terminate and its end awaited, and only then does the
pool count the connection closed and open a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from shared.settings import DatabaseSettings

log = logging.getLogger(__name__)


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
