"""Every statement timed (histogram and SQL span), failures counted, slow ones logged with plans.

Labels: operation (the verb), table (the schema's table it names), origin (request or
background, from shared.telemetry's marker); each bounded to the values listed here.

Two paths reach PostgreSQL: SQLAlchemy sessions, observed through engine events, and the
single-statement reads of Database.fetch, which call the driver directly; both report here.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

from opentelemetry import trace
from sqlalchemy import Connection, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.models import Base
from shared.metrics import DB_QUERY_DURATION, DB_QUERY_ERRORS, DB_SLOW_QUERIES
from shared.telemetry import BACKGROUND, REQUEST, end_sql_span, origin, start_sql_span

log = logging.getLogger("shared.db.engine")

# Label values stay bounded: known verbs and the schema's tables, anything else "other".
VERBS = frozenset(
    {"select", "insert", "update", "delete", "with", "copy", "set", "show", "savepoint", "release"}
)
_EXPLAINABLE = frozenset({"select", "insert", "update", "delete", "with"})
# The schema's tables: the models', and those only the migrations and raw statements know
# (tests/test_db_labels.py checks this against a migrated database).
TABLES = frozenset(Base.metadata.tables) | {
    "alembic_version",
    "artist_generation_counts",
    "generation_rollup_histogram",
    "generation_rollups",
    "profile_invalidation_outbox",
    "request_log",
}
# The errors the code can meet, by the class name the driver (or asyncio) raises: those of a
# statement, and those of making or checking out a connection ("connect"). Any other: "other".
STATEMENT_ERRORS = (
    "UniqueViolationError",
    "ForeignKeyViolationError",
    "CheckViolationError",
    "QueryCanceledError",
    "DeadlockDetectedError",
    "SerializationError",
    "LockNotAvailableError",
    "ReadOnlySQLTransactionError",
    "InsufficientPrivilegeError",
    "UndefinedTableError",
    "UndefinedColumnError",
    "AdminShutdownError",
    "ConnectionDoesNotExistError",
    "InterfaceError",
    "TimeoutError",
    "CancelledError",
    "other",
)
CONNECT_ERRORS = (
    "ConnectionRefusedError",
    "OSError",
    "TimeoutError",
    "InvalidPasswordError",
    "CannotConnectNowError",
    "TooManyConnectionsError",
    "ConnectionDoesNotExistError",
    "InterfaceError",
    "other",
)
_ERROR_TYPES = frozenset(STATEMENT_ERRORS) | frozenset(CONNECT_ERRORS)
_VERB_RE = re.compile(r"^\s*(\w+)")
# A relation after FROM, JOIN, INTO, UPDATE, TABLE or COPY, quoted or not, schema-qualified or
# not; after FROM or JOIN a name followed by "(" is a set-returning function (unnest), not one.
_NAME = r'(?:"?\w+"?\.)?"?(\w+)\b"?'
_TABLE_RE = re.compile(
    rf"\b(?:(?:FROM|JOIN)\s+{_NAME}(?!\s*\()|(?:INTO|UPDATE|TABLE|COPY)\s+{_NAME})",
    re.IGNORECASE,
)
_QUERY_KEY = "stylebase_query"


@functools.lru_cache(maxsize=1024)
def classify_statement(statement: str) -> tuple[str, str]:
    """(operation, table) labels of a SQL statement: its verb, and the first of the schema's
    tables it names (a CTE's own names, functions and catalogs are passed over); "none" when
    it names no relation at all, "other" when it names only relations outside the schema."""
    verb = _VERB_RE.match(statement)
    operation = verb.group(1).lower() if verb else "other"
    names = [(read or written).lower() for read, written in _TABLE_RE.findall(statement)]
    table = next((name for name in names if name in TABLES), "other" if names else "none")
    return (operation if operation in VERBS else "other", table)


def error_type(exc: BaseException) -> str:
    name = type(exc).__name__
    return name if name in _ERROR_TYPES else "other"


@functools.lru_cache(maxsize=512)
def _duration(operation: str, table: str, origin: str) -> Any:
    """The histogram's child for these labels, looked up once (labels() takes a lock)."""
    return DB_QUERY_DURATION.labels(operation, table, origin)


def count_error(operation: str, exc: BaseException) -> None:
    DB_QUERY_ERRORS.labels(operation, error_type(exc), origin()).inc()


# Every (operation, error_type, origin) at 0 from the start, so rate() and absent() work.
for _origin in (REQUEST, BACKGROUND):
    for _operation in (*sorted(VERBS), "other"):
        for _error in STATEMENT_ERRORS:
            DB_QUERY_ERRORS.labels(_operation, _error, _origin)
    for _error in CONNECT_ERRORS:
        DB_QUERY_ERRORS.labels("connect", _error, _origin)


class Query:
    """One statement in flight: started on creation, then finished() or failed()."""

    __slots__ = ("operation", "origin", "span", "started", "statement", "table")

    def __init__(self, statement: str) -> None:
        self.statement = statement
        self.operation, self.table = classify_statement(statement)
        self.origin = origin()
        self.span: trace.Span = start_sql_span(self.operation, self.table, statement)
        self.started = time.perf_counter()

    def finished(self) -> float:
        """Record the duration and return it in milliseconds."""
        elapsed = time.perf_counter() - self.started
        _duration(self.operation, self.table, self.origin).observe(elapsed)
        end_sql_span(self.span)
        return elapsed * 1000

    def failed(self, exc: BaseException) -> None:
        # The driver's own class (UniqueViolationError, QueryCanceledError) says the most.
        DB_QUERY_ERRORS.labels(self.operation, error_type(exc), self.origin).inc()
        end_sql_span(self.span, exc)

    def log_slow(self, elapsed_ms: float, slow_query_ms: int, plan: str) -> None:
        DB_SLOW_QUERIES.labels(self.operation).inc()
        log.warning(
            "slow query: %s on %s took %.1f ms (DB_SLOW_QUERY_MS=%s)",
            self.operation,
            self.table,
            elapsed_ms,
            slow_query_ms,
            extra={"duration_ms": round(elapsed_ms, 1), "statement": self.statement, "plan": plan},
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


async def explain_on(raw: Any, query: Query, args: tuple[Any, ...]) -> str:
    """The plan of a statement Database.fetch just ran, on the same driver connection (no
    transaction is open there, so a failed EXPLAIN spoils nothing)."""
    if query.operation not in _EXPLAINABLE:
        return "(not explainable)"
    try:
        explained = await raw.fetch("EXPLAIN " + query.statement, *args)
    except Exception as exc:
        return f"(no plan: {exc})"
    return "\n".join(str(row[0]) for row in explained)


def observe_queries(engine: AsyncEngine, *, slow_query_ms: int) -> None:
    """Observe every statement a session of engine runs."""
    sync = engine.sync_engine

    @event.listens_for(sync, "before_cursor_execute")
    def _before(conn: Connection, _c: Any, statement: str, _p: Any, _ctx: Any, _m: bool) -> None:
        conn.info[_QUERY_KEY] = Query(statement)

    @event.listens_for(sync, "after_cursor_execute")
    def _after(
        conn: Connection, _c: Any, statement: str, parameters: Any, ctx: Any, many: bool
    ) -> None:
        query: Query | None = conn.info.pop(_QUERY_KEY, None)
        if query is None:
            return
        elapsed_ms = query.finished()
        if elapsed_ms < slow_query_ms:
            return
        explainable = query.operation in _EXPLAINABLE and not many
        if getattr(ctx, "is_server_side", False):
            explainable = False
        plan = _explain(conn, statement, parameters) if explainable else "(not explainable)"
        query.log_slow(elapsed_ms, slow_query_ms, plan)

    @event.listens_for(sync, "handle_error")
    def _error(context: ExceptionContext) -> None:
        conn = context.connection
        query: Query | None = conn.info.pop(_QUERY_KEY, None) if conn is not None else None
        if query is None:
            return
        orig = context.original_exception
        query.failed(orig.__cause__ if orig.__cause__ is not None else orig)
