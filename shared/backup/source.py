"""Which server to back up: POSTGRES_DATABASE_URL, or the embedded one 'stylebase up' runs."""

from __future__ import annotations

import os
from pathlib import Path

from shared.backup.settings import BackupSettings, libpq_url
from shared.backup.tools import BackupError
from shared.embedded.postgres import DATABASE


def running_port(pgdata: Path) -> int | None:
    """The port of the postmaster running on pgdata, from its postmaster.pid; None if none."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return port


def embedded_url(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


def database_url(settings: BackupSettings) -> str:
    if settings.database_url is not None:
        return libpq_url(settings.database_url)
    port = running_port(settings.embedded_pgdata.resolve())
    if port is None:
        raise BackupError(
            f"the embedded PostgreSQL in {settings.embedded_pgdata} is not running; start it "
            "with 'stylebase up' or set POSTGRES_DATABASE_URL"
        )
    return embedded_url(port)
