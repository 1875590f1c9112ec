"""Run the Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from shared.db.engine import Database, sqlstate
from shared.errors import FailedPrecondition, StylebaseError
from shared.settings import to_asyncpg_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_UNDEFINED_TABLE = "42P01"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would choke on '%' in passwords.
    config.set_main_option("sqlalchemy.url", to_asyncpg_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    """The revision this code expects: the head of its migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None, "the migrations have no head"
    return head


def schema_check(db: Database) -> Callable[[], Awaitable[None]]:
    """A readiness check: the database answers and its schema is the code's head.

    One round trip, so it doubles as the ping. The head is read from the scripts once,
    here, not on every check.
    """
    expected = head_revision()

    async def check() -> None:
        current = await _current_revision(db)
        if current != expected:
            raise FailedPrecondition(
                f"database schema at {current}, code expects {expected}; run stylebase migrate",
                reason="SCHEMA_MISMATCH",
            )

    return check


async def _current_revision(db: Database) -> str:
    try:
        rows = await db.fetch("SELECT version_num FROM alembic_version", time_left=2.0)
    except StylebaseError:
        raise  # the database is away or slow: the check fails as it is
    except Exception as exc:
        # On a trivial read of alembic_version, any other error is the setup: no such table,
        # or no pgvector for a codec the service loads on connect ("unknown type:
        # public.vector"); the migrations create both.
        return "none" if sqlstate(exc) == _UNDEFINED_TABLE else f"unknown ({exc})"
    return ", ".join(sorted(str(row[0]) for row in rows)) or "none"
