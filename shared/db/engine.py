"""One engine and pool per process, transactions bounded by the caller's deadline, retries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from shared.errors import Aborted, DeadlineExceeded, StylebaseError, Unavailable
from shared.settings import DatabaseSettings

log = logging.getLogger(__name__)
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
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": application_name,
            },
        },
    )


class Database:
    """The process's engine and session factory; one session per unit of work."""

    def __init__(self, engine: AsyncEngine, settings: DatabaseSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(
        cls, settings: DatabaseSettings, *, application_name: str, readonly: bool = False
    ) -> Database:
        url = (
            settings.readonly_database_url if readonly and settings.readonly_database_url else None
        )
        return cls(create_engine(settings, application_name=application_name, url=url), settings)

    @asynccontextmanager
    async def transaction(self, *, time_left: float | None = None) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on any error.

        time_left is the caller's remaining deadline in seconds; when shorter
        than the configured statement timeout it bounds every statement instead.
        """
        if time_left is not None and time_left <= 0:
            raise DeadlineExceeded("the deadline expired before the database was reached")
        try:
            async with self.sessions() as session, session.begin():
                if (
                    time_left is not None
                    and time_left * 1000 < self.settings.db_statement_timeout_ms
                ):
                    ms = max(1, int(time_left * 1000))
                    await session.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                yield session
        except (DBAPIError, PoolTimeoutError, OSError) as exc:
            raise translate_db_error(exc) from exc

    async def run(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, time_left: float | None = None
    ) -> T:
        """Run work in a transaction, retrying (at most 3 attempts) only when the
        connection could not be made: nothing was sent, so a retry cannot apply twice."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(initial=0.05, max=0.5),
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        ):
            with attempt:
                async with self.transaction(time_left=time_left) as session:
                    return await work(session)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def ping(self) -> None:
        async with self.transaction(time_left=2.0) as session:
            await session.execute(text("SELECT 1"))

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


def _is_retryable(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(exc, Unavailable) and cause is not None and _is_connect_error(cause)
