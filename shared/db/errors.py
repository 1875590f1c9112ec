"""Driver and pool errors as the domain errors clients see, and which of them are connection loss.

Both paths to PostgreSQL come here: sessions raise SQLAlchemy's wrappers (the driver's error
is their .orig or its cause), Database.fetch and the pool's own connects raise asyncpg's
classes or plain OSError. Whatever the path, a database that is down, restarting, crashed or
full answers UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import asyncpg
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.errors import Aborted, DeadlineExceeded, StylebaseError, Unavailable

# SQLSTATEs: statement canceled by timeout, and the ones that ask for a retry of the transaction.
_QUERY_CANCELED = "57014"
_RETRY_TRANSACTION = frozenset({"40001", "40P01"})
# The server is going away or not there yet: terminated by a shutdown (57P01), crashed
# (57P02), starting up, shutting down or in recovery (57P03), out of connection slots (53300).
# Class 08 (connection exceptions) counts too.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# asyncpg.InterfaceError covers "connection is closed" and ConnectionDoesNotExistError;
# InternalClientError is a connection whose protocol state the server broke (a FATAL message
# while it was idle in the pool: "another operation is in progress" on the next use).
_CONNECTION_ERRORS = (
    OSError,
    ConnectionError,
    EOFError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class NotSent(Unavailable):
    """The database was not reached: no connection could be made or checked out, or the one
    checked out was found dead before any of the work was sent. Retrying cannot apply twice."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    orig = getattr(exc, "orig", None)
    for candidate in (exc, orig, getattr(orig, "__cause__", None), exc.__cause__):
        if candidate is not None:
            yield candidate


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a driver error, whether raised by a session or by fetch."""
    for candidate in _chain(exc):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection is gone or could not be made (whatever was sent is unknown)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if any(isinstance(e, _CONNECTION_ERRORS) for e in _chain(exc)):
        return True
    state = sqlstate(exc) or ""
    return state.startswith("08") or state in _UNAVAILABLE_STATES


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
    if is_connection_error(exc) or isinstance(
        exc, InterfaceError | OperationalError | DisconnectionError
    ):
        return Unavailable("the database is unreachable; retry later")
    return exc


def raise_translated(exc: BaseException) -> NoReturn:
    """Raise the domain error for exc (from exc), or exc itself when it has none."""
    translated = translate_db_error(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def raise_not_sent(exc: BaseException) -> NoReturn:
    """Raise for a failure to reach the database: NotSent when it is unavailable (so the work
    may be retried), what translate_db_error says otherwise (a full pool, a bad password)."""
    translated = translate_db_error(exc)
    if isinstance(translated, Unavailable) and not isinstance(exc, PoolTimeoutError):
        raise NotSent(translated.message) from exc
    raise_translated(exc)
