"""One engine and pool per process, transactions bounded by the caller's deadline, retries."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import ExceptionContext
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

from shared.db.models import Base
from shared.errors import Aborted, DeadlineExceeded, StylebaseError, Unavailable
from shared.metrics import DB_QUERY_DURATION, DB_QUERY_ERRORS, DB_SLOW_QUERIES, track_pool
from shared.settings import DatabaseSettings
from shared.telemetry import end_sql_span, start_sql_span

log = logging.getLogger(__name__)
_LOCAL_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")
T = TypeVar("T")

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


def _sqlstate(exc: BaseException) -> str | None:
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
        _sqlstate(exc) or ""
    ).startswith("08")


# Label values stay bounded: known verbs and the schema's own tables, anything else "other".
_VERBS = frozenset(
    {"select", "insert", "update", "delete", "with", "set", "show", "savepoint", "release"}
)
_EXPLAINABLE = frozenset({"select", "insert", "update", "delete", "with"})
_TABLES = frozenset(Base.metadata.tables)
_VERB_RE = re.compile(r"^\s*(\w+)")
_TABLE_RE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+"?(\w+)"?', re.IGNORECASE)
_QUERY_KEY = "stylebase_query"


def classify_statement(statement: str) -> tuple[str, str]:
    """(operation, table) labels of a SQL statement."""
    verb = _VERB_RE.match(statement)
    operation = verb.group(1).lower() if verb else "other"
    table = _TABLE_RE.search(statement)
    name = table.group(1).lower() if table else "none"
    return (
        operation if operation in _VERBS else "other",
        name if name in _TABLES or name == "none" else "other",
    )


def _explain(conn: Connection, statement: str, parameters: Any) -> str:
    """The plan of a statement that just ran, in a savepoint so a failure cannot spoil the
    caller's transaction (EXPLAIN without ANALYZE runs nothing)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SAVEPOINT stylebase_explain")
        try:
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())
            cursor.execute("RELEASE SAVEPOINT stylebase_explain")
            return plan
        except Exception as exc:
            cursor.execute("ROLLBACK TO SAVEPOINT stylebase_explain")
            return f"(no plan: {exc})"
    except Exception as exc:  # outside a transaction no savepoint can be taken
        return f"(no plan: {exc})"
    finally:
        cursor.close()


def observe_queries(engine: AsyncEngine, *, slow_query_ms: int) -> None:
    """Time every statement (histogram and SQL span), count failures, log slow ones with plans."""
    sync = engine.sync_engine

    @event.listens_for(sync, "before_cursor_execute")
    def _before(conn: Connection, _c: Any, statement: str, _p: Any, _ctx: Any, _m: bool) -> None:
        operation, table = classify_statement(statement)
        span = start_sql_span(operation, table, statement)
        conn.info[_QUERY_KEY] = (time.perf_counter(), span, operation, table)

    @event.listens_for(sync, "after_cursor_execute")
    def _after(
        conn: Connection, _c: Any, statement: str, parameters: Any, ctx: Any, many: bool
    ) -> None:
        entry = conn.info.pop(_QUERY_KEY, None)
        if entry is None:
            return
        started, span, operation, table = entry
        elapsed_ms = (time.perf_counter() - started) * 1000
        DB_QUERY_DURATION.labels(operation, table).observe(elapsed_ms / 1000)
        end_sql_span(span)
        if elapsed_ms < slow_query_ms:
            return
        DB_SLOW_QUERIES.labels(operation).inc()
        explainable = operation in _EXPLAINABLE and not many
        if getattr(ctx, "is_server_side", False):
            explainable = False
        plan = _explain(conn, statement, parameters) if explainable else "(not explainable)"
        log.warning(
            "slow query: %s on %s took %.1f ms (DB_SLOW_QUERY_MS=%s)",
            operation,
            table,
            elapsed_ms,
            slow_query_ms,
            extra={"duration_ms": round(elapsed_ms, 1), "statement": statement, "plan": plan},
        )

    @event.listens_for(sync, "handle_error")
    def _error(context: ExceptionContext) -> None:
        conn = context.connection
        entry = conn.info.pop(_QUERY_KEY, None) if conn is not None else None
        if entry is None:
            return
        _, span, operation, _ = entry
        orig = context.original_exception
        # The driver's own class (UniqueViolationError, QueryCanceledError) says the most.
        cause = orig.__cause__ if orig.__cause__ is not None else orig
        DB_QUERY_ERRORS.labels(operation, type(cause).__name__).inc()
        end_sql_span(span, cause)


def translate_db_error(exc: BaseException) -> BaseException:
    """Map a driver or pool error to the domain error a client should see."""
    if isinstance(exc, StylebaseError):
        return exc
    if isinstance(exc, PoolTimeoutError):
        return Unavailable("database connection pool exhausted; retry later")
    state = _sqlstate(exc)
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
        if time_left is not None and time_left <= 0:
            raise DeadlineExceeded("the deadline expired before the database was reached")
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
            raise translate_db_error(exc) from exc

    async def run(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, time_left: float | None = None
    ) -> T:
        """Run work in a transaction, retrying (at most 3 attempts) only when the
        connection could not be made: nothing was sent, so a retry cannot apply twice."""

        async def attempt() -> T:
            async with self.transaction(time_left=time_left) as session:
                return await work(session)

        return await _retry_connect(attempt)

    async def ping(self) -> None:
        async def select_one(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))

        await self.run(select_one, time_left=2.0)

    def pool_status(self) -> dict[str, Any]:
        pool: Any = self.engine.pool
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "overflow": pool.overflow(),
            "idle": pool.checkedin(),
        }

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _retry_connect(attempt: Callable[[], Awaitable[T]]) -> T:
    async for state in AsyncRetrying(
        stop=stop_after_attempt(3),
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
