"""One writer at a time in BACKUP_DIR: the schedule, 'stylebase backup' and prune."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.backup.tools import BackupError


@contextmanager
def exclusive(root: Path, what: str) -> Iterator[None]:
    path = root / ".lock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BackupError(
                f"another backup or prune is running in {root}; {what} again when it is done"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
