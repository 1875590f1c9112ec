"""Backup settings; field names are the environment variable names."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator

from shared.settings import _Base, to_libpq_url

SECONDS_PER_DAY = 86_400.0


class BackupSettings(_Base):
    # Empty: <STYLEBASE_DATA_DIR>/backups, so .stylebase/backups by default, and a stack
    # started on a restored directory archives into a fresh place of its own.
    backup_dir: str = ""
    # 'stylebase up' streams the embedded server's WAL into BACKUP_DIR/wal.
    backup_wal_archive: bool = True
    # A float so a test can keep seconds; the recovery window prune keeps.
    backup_retention_days: float = Field(default=30.0, gt=0)
    # 'stylebase up' takes a base backup when the newest is older than this.
    backup_interval_hours: float = Field(default=24.0, gt=0)
    # Scheduled backups are incremental (only the blocks changed since the previous one) until
    # the newest full one is this old; 0: always full.
    backup_full_interval_days: float = Field(default=7.0, ge=0)
    # The archiver's lag and the backups' age, for Prometheus; 0 turns it off.
    backup_metrics_port: int = Field(default=9106, ge=0, le=65535)
    # Where that endpoint listens: 0.0.0.0 in a container.
    backup_metrics_host: str = "127.0.0.1"
    backup_slot_name: str = Field(default="stylebase_archiver", pattern=r"^[a-z0-9_]{1,63}$")
    # The database to back up; unset: the embedded server of STYLEBASE_DATA_DIR.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("POSTGRES_DATABASE_URL", "DATABASE_URL")
    )
    stylebase_data_dir: str = ".stylebase"

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must be a PostgreSQL URL (postgresql://user@host:port/db)")
        return value

    @property
    def root(self) -> Path:
        return Path(self.backup_dir or str(Path(self.stylebase_data_dir) / "backups"))

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    @property
    def retention_seconds(self) -> float:
        return self.backup_retention_days * SECONDS_PER_DAY

    @property
    def interval_seconds(self) -> float:
        return self.backup_interval_hours * 3600.0

    @property
    def full_interval_seconds(self) -> float:
        return self.backup_full_interval_days * SECONDS_PER_DAY

    @property
    def embedded_pgdata(self) -> Path:
        return Path(self.stylebase_data_dir) / "postgres"


def libpq_url(url: str) -> str:
    """The URL for libpq's tools: asyncpg's ssl= spelling becomes libpq's sslmode=."""
    plain = to_libpq_url(url)
    base, sep, query = plain.partition("?")
    if not sep:
        return plain
    params = [("sslmode" + p[3:]) if p.startswith("ssl=") else p for p in query.split("&")]
    return base + "?" + "&".join(params)
