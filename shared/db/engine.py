"""One engine and pool per process, and the units of work run on it within the caller's deadline.

Errors and their translation live in shared.db.errors, retries in shared.db.retry, the pool's
checks and the retirement of cut-off connections in shared.db.pool.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.connectors.asyncio import AsyncAdapt_Error
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db.errors import (
    is_connection_error,
    raise_not_sent,
    raise_translated,
    sqlstate,
    translate_db_error,
)
from shared.db.lane import FetchLane
from shared.db.observe import Query, classify_statement, count_error, explain_on, observe_queries
from shared.db.pool import BackendSlots, create_engine, install_pre_ping
from shared.db.retry import check_deadline, with_retries
from shared.errors import DeadlineExceeded
from shared.metrics import track_pool
from shared.settings import DatabaseSettings

log = logging.getLogger(__name__)
_LOCAL_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")
T = TypeVar("T")
__all__ = [
    "Database",
    "classify_statement",
    "create_engine",
    "positional",
    "sqlstate",
    "translate_db_error",
]
_BIND_RE = re.compile(r"(?<![:\w]):(\w+)")
# What reaching the database may raise, on either path: SQLAlchemy's wrappers, the driver's
# errors as the dialect re-raises them (a raw pool connect, for fetch), the driver's own.
_DRIVER_ERRORS = (
    DBAPIError,
    AsyncAdapt_Error,
    PoolTimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@functools.lru_cache(maxsize=512)
def _numbered(statement: str) -> tuple[str, tuple[str, ...]]:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _BIND_RE.sub(number, statement), tuple(names)


def positional(statement: str, params: Mapping[str, Any]) -> tuple[Any, ...]:
    """A statement with :name binds (as sessions take it) as Database.fetch's arguments:
    the statement with $1, $2, ... (a name used twice keeps its number), then the values.
    The statement must not hold ':word' inside a string literal."""
    numbered, names = _numbered(statement)
    return (numbered, *(params[name] for name in names))


def _count_connect_error(exc: BaseException) -> None:
    if not isinstance(exc, DBAPIError):  # statement errors are counted by the engine hook
        count_error("connect", exc)


def _left(deadline: float | None) -> float | None:
    """Seconds to deadline (a time.monotonic() value), DeadlineExceeded when none are left."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the deadline expired while waiting for a database connection")
    return left


class Database:
    """The process's engine and session factory; one session per unit of work."""

    def __init__(self, engine: AsyncEngine, settings: DatabaseSettings, *, name: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.name = name or engine.url.database or "database"
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        observe_queries(engine, slow_query_ms=settings.db_slow_query_ms)
        if settings.db_pool_pre_ping:
            install_pre_ping(engine, idle_seconds=settings.db_pool_ping_idle_seconds)
        # Retiring a connection opens one for the cancel request, then ends the session.
        close_within = 2 * settings.db_connect_timeout_seconds
        self.slots = BackendSlots(
            settings.db_pool_size + settings.db_max_overflow,
            wait=settings.db_pool_timeout_seconds,
            close_within=close_within,
        )
        self.slots.install(engine)
        self._lane = FetchLane(
            engine,
            # At most half the pool, so sessions always have the other half (none at size 1).
            capacity=settings.db_pool_size // 2,
            ping_idle_seconds=(
                settings.db_pool_ping_idle_seconds if settings.db_pool_pre_ping else None
            ),
            close_timeout=close_within,
        )
        track_pool(self)

    @classmethod
    def connect(
        cls, settings: DatabaseSettings, *, application_name: str, readonly: bool = False
    ) -> Database:
        url = (
            settings.readonly_database_url if readonly and settings.readonly_database_url else None
        )
        engine = create_engine(settings, application_name=application_name, url=url)
        return cls(engine, settings, name=application_name + ("-readonly" if url else ""))

    @asynccontextmanager
    async def transaction(self, *, time_left: float | None = None) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on any error.

        time_left is the caller's remaining deadline in seconds; when shorter than the
        statement timeout it bounds every statement instead, on the server: a statement waiting
        on a lock is cancelled there even if this client is gone. A failure to get a live
        connection raises NotSent (nothing of the work was sent); any other loss Unavailable.
        """
        check_deadline(time_left)
        deadline = None if time_left is None else time.monotonic() + time_left
        try:
            async with self.sessions() as session, session.begin():
                try:
                    # Checkout and pre-ping; BEGIN goes with the first statement.
                    await session.connection()
                except _DRIVER_ERRORS as exc:
                    _count_connect_error(exc)
                    raise_not_sent(exc)
                # What is left once a connection was found: the wait for one counts.
                left = _left(deadline)
                if left is not None and left * 1000 < self.settings.db_statement_timeout_ms:
                    # A bound parameter keeps this one prepared statement for every deadline.
                    await session.execute(_LOCAL_TIMEOUT, {"ms": str(max(1, int(left * 1000)))})
                yield session
        except _DRIVER_ERRORS as exc:
            _count_connect_error(exc)
            raise_translated(exc)

    async def run(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        time_left: float | None = None,
        idempotent: bool = False,
    ) -> T:
        """Run work in a transaction, at most 3 attempts within time_left.

        Work is retried when nothing of it reached the server. Only idempotent work (reads)
        is retried after a connection lost once a statement was sent: a write lost with its
        COMMIT may have committed.
        """

        async def attempt(left: float | None) -> T:
            async with self.transaction(time_left=left) as session:
                return await work(session)

        return await with_retries(attempt, time_left=time_left, idempotent=idempotent)

    async def fetch(
        self,
        statement: str,
        *args: Any,
        time_left: float | None = None,
        idempotent: bool | None = None,
    ) -> list[asyncpg.Record]:
        """The rows of one statement ($1-style parameters), run as its own transaction.

        The hottest calls come here rather than through a session: one round trip instead of
        BEGIN, statement and COMMIT, and no ORM result processing, about 1 ms less per call.
        A single statement is atomic, so a write that must be all-or-nothing fits too; work
        of several statements belongs in run(). The connection comes from the same pool. The
        deadline is asyncpg's timeout, which cancels the statement on the server (a cancelled
        write is rolled back); DB_STATEMENT_TIMEOUT_MS still bounds it there. idempotent
        defaults to whether the statement is a SELECT (see run for what it changes).
        """
        check_deadline(time_left)
        if idempotent is None:
            idempotent = classify_statement(statement)[0] == "select"

        async def attempt(left: float | None) -> list[asyncpg.Record]:
            deadline = None if left is None else time.monotonic() + left
            try:
                fairy = await self._lane.borrow()
            except _DRIVER_ERRORS as exc:
                _count_connect_error(exc)
                raise_not_sent(exc)
            try:
                left = _left(deadline)
            except DeadlineExceeded:
                await self._lane.give_back(fairy)
                raise
            return await self._fetch_on(fairy, statement, args, left)

        return await with_retries(attempt, time_left=time_left, idempotent=idempotent)

    async def _fetch_on(
        self, fairy: Any, statement: str, args: tuple[Any, ...], time_left: float | None
    ) -> list[asyncpg.Record]:
        raw: asyncpg.Connection = fairy.driver_connection
        query = Query(statement)
        try:
            rows: list[asyncpg.Record] = await raw.fetch(statement, *args, timeout=time_left)
        except BaseException as exc:
            query.failed(exc)
            if isinstance(exc, asyncpg.PostgresError) and not is_connection_error(exc):
                await self._lane.give_back(fairy)
            else:
                self._lane.discard(fairy)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    "the database statement ran past the deadline and was cancelled"
                ) from exc
            raise_translated(exc)
        elapsed_ms = query.finished()
        try:
            slow_ms = self.settings.db_slow_query_ms
            if elapsed_ms >= slow_ms:
                query.log_slow(elapsed_ms, slow_ms, await explain_on(raw, query, args))
        finally:
            await self._lane.give_back(fairy)
        return rows

    async def ping(self) -> None:
        async def select_one(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))

        await self.run(select_one, time_left=2.0, idempotent=True)

    def pool_status(self) -> dict[str, Any]:
        pool: Any = self.engine.pool
        lane = self._lane.idle  # checked out of the pool, but idle
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout() - lane,
            # SQLAlchemy counts overflow from -size up; below zero means none above the size.
            "overflow": max(0, pool.overflow()),
            "idle": pool.checkedin() + lane,
        }

    async def dispose(self) -> None:
        await self._lane.close()
        await self.engine.dispose()
