"""One engine and pool per process, transactions bounded by the caller's deadline, retries."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from shared.db.lane import FetchLane
from shared.db.observe import Query, classify_statement, explain_on, observe_queries
from shared.errors import Aborted, DeadlineExceeded, StylebaseError, Unavailable
from shared.metrics import DB_QUERY_ERRORS, track_pool
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
_FIRST_RETRY_WAIT = 0.05
_BIND_RE = re.compile(r"(?<![:\w]):(\w+)")

# SQLSTATEs: statement canceled by timeout, and the ones that ask for a retry of the transaction.
_QUERY_CANCELED = "57014"
_RETRY_TRANSACTION = {"40001", "40P01"}
_CONNECT_ERRORS = (
    OSError,
    ConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a driver error, whether raised by a session or by fetch."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _is_connect_error(exc: BaseException) -> bool:
    chain: list[BaseException | None] = [exc, getattr(exc, "orig", None), exc.__cause__]
    orig = getattr(exc, "orig", None)
    if orig is not None:
        chain.append(orig.__cause__)
    return any(isinstance(e, _CONNECT_ERRORS) for e in chain if e is not None) or (
        sqlstate(exc) or ""
    ).startswith("08")


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


def _check_deadline(time_left: float | None) -> None:
    if time_left is not None and time_left <= 0:
        raise DeadlineExceeded("the deadline expired before the database was reached")


def _raise_translated(exc: BaseException) -> NoReturn:
    """Raise the domain error for exc (from exc), or exc itself when it has none."""
    translated = translate_db_error(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def translate_db_error(exc: BaseException) -> BaseException:
    """Map a driver or pool error to the domain error a client should see."""
    if isinstance(exc, StylebaseError):
        return exc
    if isinstance(exc, PoolTimeoutError):
        return Unavailable("database connection pool exhausted; retry later")
    state = sqlstate(exc)
    if state == _QUERY_CANCELED:
        return DeadlineExceeded("the database statement ran past the deadline and was rolled back")
    if state in _RETRY_TRANSACTION:
        return Aborted("the transaction conflicted with another; retry it")
    if _is_connect_error(exc) or isinstance(exc, InterfaceError | OperationalError):
        return Unavailable("the database is unreachable; retry later")
    return exc


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
        self._lane = FetchLane(
            engine,
            # At most half the pool, so sessions always have the other half (none at size 1).
            capacity=settings.db_pool_size // 2,
            ping_idle_seconds=(
                settings.db_pool_ping_idle_seconds if settings.db_pool_pre_ping else None
            ),
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
        on a lock is cancelled there even if this client is gone.
        """
        _check_deadline(time_left)
        try:
            async with self.sessions() as session, session.begin():
                if (
                    time_left is not None
                    and time_left * 1000 < self.settings.db_statement_timeout_ms
                ):
                    # A bound parameter keeps this one prepared statement for every deadline.
                    await session.execute(
                        _LOCAL_TIMEOUT, {"ms": str(max(1, int(time_left * 1000)))}
                    )
                yield session
        except (DBAPIError, PoolTimeoutError, OSError) as exc:
            if not isinstance(exc, DBAPIError):  # statement errors are counted by the engine hook
                DB_QUERY_ERRORS.labels("connect", type(exc).__name__).inc()
            _raise_translated(exc)

    async def run(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, time_left: float | None = None
    ) -> T:
        """Run work in a transaction, retrying (at most 3 attempts) only when the
        connection could not be made: nothing was sent, so a retry cannot apply twice."""

        async def attempt() -> T:
            async with self.transaction(time_left=time_left) as session:
                return await work(session)

        return await _retry_connect(attempt)

    async def fetch(
        self, statement: str, *args: Any, time_left: float | None = None
    ) -> list[asyncpg.Record]:
        """The rows of one statement ($1-style parameters), run as its own transaction.

        The hottest calls come here rather than through a session: one round trip instead of
        BEGIN, statement and COMMIT, and no ORM result processing, about 1 ms less per call.
        A single statement is atomic, so a write that must be all-or-nothing fits too; work
        of several statements belongs in run(). The connection comes from the same pool. The
        deadline is asyncpg's timeout, which cancels the statement on the server (a cancelled
        write is rolled back); DB_STATEMENT_TIMEOUT_MS still bounds it there.
        """
        _check_deadline(time_left)

        async def attempt() -> list[asyncpg.Record]:
            try:
                fairy = await self._lane.borrow()
            except (DBAPIError, PoolTimeoutError, OSError) as exc:
                DB_QUERY_ERRORS.labels("connect", type(exc).__name__).inc()
                _raise_translated(exc)
            return await self._fetch_on(fairy, statement, args, time_left)

        return await _retry_connect(attempt)

    async def _fetch_on(
        self, fairy: Any, statement: str, args: tuple[Any, ...], time_left: float | None
    ) -> list[asyncpg.Record]:
        raw: asyncpg.Connection = fairy.driver_connection
        query = Query(statement)
        try:
            rows: list[asyncpg.Record] = await raw.fetch(statement, *args, timeout=time_left)
        except BaseException as exc:
            query.failed(exc)
            if isinstance(exc, asyncpg.PostgresError):
                await self._lane.give_back(fairy)
            else:
                self._lane.discard(fairy)
            if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                raise DeadlineExceeded(
                    "the database statement ran past the deadline and was cancelled"
                ) from exc
            _raise_translated(exc)
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

        await self.run(select_one, time_left=2.0)

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


async def _retry_connect(attempt: Callable[[], Awaitable[T]]) -> T:
    # The first attempt runs bare: the retry loop costs ~30 us a call, and it is rarely needed.
    try:
        return await attempt()
    except Unavailable as exc:
        if not _is_retryable(exc):
            raise
    await asyncio.sleep(_FIRST_RETRY_WAIT * random.random())
    async for state in AsyncRetrying(
        stop=stop_after_attempt(2),
        wait=wait_exponential_jitter(multiplier=0.05, max=0.5),
        retry=retry_if_exception(_is_retryable),
        reraise=True,
    ):
        with state:
            return await attempt()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _is_retryable(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(exc, Unavailable) and cause is not None and _is_connect_error(cause)
