"""The operation and table labels of every statement the code issues name a real verb and table."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import TextClause

import services
import shared
from shared.db.engine import Database, classify_statement
from shared.db.observe import TABLES

_SQL_STARTS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "COPY")
# Modules that run as commands or load other tools, not statements of a running service.
_SKIPPED = ("shared.migrations", "services.http_api")


def _modules() -> Iterator[object]:
    for package in (shared, services):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.startswith(_SKIPPED) and not info.name.endswith("__main__"):
                yield importlib.import_module(info.name)


def _statements() -> dict[str, str]:
    """Module-level statements of shared/ and services/: text() clauses and SQL strings."""
    found: dict[str, str] = {}
    for module in _modules():
        for name, value in vars(module).items():
            where = f"{getattr(module, '__name__', '?')}.{name}"
            if isinstance(value, TextClause):
                found[where] = value.text
            elif isinstance(value, str) and value.lstrip().upper().startswith(_SQL_STARTS):
                found[where] = value
    return found


STATEMENTS = _statements()


def test_statements_were_found() -> None:
    # The outbox relay, the request log and the readiness check at least.
    names = " ".join(STATEMENTS)
    for expected in ("invalidation._DUE", "idempotency._CLAIM", "idempotency._PRUNE"):
        assert expected in names, sorted(STATEMENTS)


@pytest.mark.parametrize("where", sorted(STATEMENTS))
def test_each_statement_of_the_code_names_its_table(where: str) -> None:
    statement = STATEMENTS[where]
    operation, table = classify_statement(statement)
    assert operation != "other", statement
    if table == "other":
        # Only a read of PostgreSQL's own catalogs names no table of the schema.
        assert re.search(r"\bFROM pg_\w+", statement), statement
        assert not any(re.search(rf"\b{name}\b", statement) for name in TABLES), statement
    if any(name in statement for name in TABLES):
        assert table in TABLES, statement


@pytest.mark.parametrize(
    ("statement", "labels"),
    [
        ('SELECT * FROM "public"."artists"', ("select", "artists")),
        ("SELECT * FROM public.style_profiles", ("select", "style_profiles")),
        ("SELECT version_num FROM alembic_version", ("select", "alembic_version")),
        (
            "WITH locked AS (SELECT o.artist_name FROM profile_invalidation_outbox o) "
            "DELETE FROM profile_invalidation_outbox o USING locked",
            ("with", "profile_invalidation_outbox"),
        ),
        (
            "INSERT INTO request_log AS l (rpc) VALUES ($1) ON CONFLICT (rpc) DO UPDATE SET x = 1",
            ("insert", "request_log"),
        ),
        (
            "SELECT s FROM unnest($1::text[]) u JOIN generation_rollups r ON true",
            ("select", "generation_rollups"),
        ),
        ("COPY generation_history FROM STDIN", ("copy", "generation_history")),
        ("SELECT 1", ("select", "none")),
        ("SELECT * FROM generation_rollup_buckets($1)", ("select", "none")),
        ("SELECT * FROM pg_stat_activity", ("select", "other")),
        ("VACUUM artists", ("other", "none")),
    ],
)
def test_statement_forms_the_code_uses(statement: str, labels: tuple[str, str]) -> None:
    assert classify_statement(statement) == labels


async def test_the_label_tables_are_the_schema_tables(db: Database) -> None:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    assert {row["table_name"] for row in rows} == TABLES
