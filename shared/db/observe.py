"""Every statement timed (histogram and SQL span), failures counted, slow ones logged with plans.

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
from shared.telemetry import end_sql_span, start_sql_span

log = logging.getLogger("shared.db.engine")

# Label values stay bounded: known verbs and the schema's own tables, anything else "other".
_VERBS = frozenset(
    {"select", "insert", "update", "delete", "with", "set", "show", "savepoint", "release"}
)
_EXPLAINABLE = frozenset({"select", "insert", "update", "delete", "with"})
_TABLES = frozenset(Base.metadata.tables)
_VERB_RE = re.compile(r"^\s*(\w+)")
_TABLE_RE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+"?(\w+)"?', re.IGNORECASE)
_QUERY_KEY = "stylebase_query"


@functools.lru_cache(maxsize=1024)
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


@functools.lru_cache(maxsize=256)
def _duration(operation: str, table: str) -> Any:
    """The histogram's child for these labels, looked up once (labels() takes a lock)."""
    return DB_QUERY_DURATION.labels(operation, table)


class Query:
    """One statement in flight: started on creation, then finished() or failed()."""

    __slots__ = ("operation", "span", "started", "statement", "table")

    def __init__(self, statement: str) -> None:
        self.statement = statement
        self.operation, self.table = classify_statement(statement)
        self.span: trace.Span = start_sql_span(self.operation, self.table, statement)
        self.started = time.perf_counter()

    def finished(self) -> float:
        """Record the duration and return it in milliseconds."""
        elapsed = time.perf_counter() - self.started
        _duration(self.operation, self.table).observe(elapsed)
        end_sql_span(self.span)
        return elapsed * 1000

    def failed(self, exc: BaseException) -> None:
        # The driver's own class (UniqueViolationError, QueryCanceledError) says the most.
        DB_QUERY_ERRORS.labels(self.operation, type(exc).__name__).inc()
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
