"""A source cluster of its own for the backup tests (durable: crashes are part of the drill),
rows written in labelled rounds, and snapshots to compare a restore with."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import cli
from shared.backup.archiver import Archiver
from shared.backup.settings import BackupSettings
from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_asyncpg_url

Snapshot = dict[str, list[str]]


@dataclass
class Source:
    server: EmbeddedPostgres
    settings: BackupSettings
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    def sql(self, statement: str) -> str:
        return self.server.psql(statement, database="stylebase").strip()

    def write(self, label: str, count: int = 5) -> None:
        """count artists, each with a style profile and two generations, in one transaction."""
        self.sql(
            f"""
            BEGIN;
            INSERT INTO artists (id, name, research_status)
              SELECT gen_random_uuid(), '{label}-' || i, 'cached'
              FROM generate_series(1, {count}) i;
            INSERT INTO style_profiles (id, artist_id, text_description, quantitative_params,
                                        confidence_score)
              SELECT gen_random_uuid(), a.id, 'profile of ' || a.name,
                     jsonb_build_object('tempo_avg', 100 + length(a.name)), 0.8
              FROM artists a WHERE a.name LIKE '{label}-%';
            INSERT INTO generation_history (id, artist_id, provider_used, generation_time_ms,
                                            user_params)
              SELECT gen_random_uuid(), a.id, 'template', 1000 + g,
                     jsonb_build_object('round', '{label}', 'n', g)
              FROM artists a, generate_series(1, 2) g WHERE a.name LIKE '{label}-%';
            COMMIT;
            """
        )

    def switch_wal(self) -> None:
        self.sql("SELECT pg_switch_wal()")

    def settings_with(self, **overrides: object) -> BackupSettings:
        return self.settings.model_copy(update=overrides)


def snapshot(server: EmbeddedPostgres) -> Snapshot:
    def rows(query: str) -> list[str]:
        return server.psql(query, database="stylebase").strip().splitlines()

    return {
        "artists": rows("SELECT name || '|' || research_status FROM artists ORDER BY name"),
        "style_profiles": rows(
            "SELECT a.name || '|' || p.text_description || '|' || p.quantitative_params::text "
            "FROM style_profiles p JOIN artists a ON a.id = p.artist_id ORDER BY a.name"
        ),
        "generation_history": rows(
            "SELECT id::text || '|' || coalesce(artist_id::text, '') || '|' || "
            "user_params::text FROM generation_history ORDER BY id"
        ),
    }


def start_source(tmp: Path) -> Source:
    server = EmbeddedPostgres(tmp / "source" / "postgres", durable=True)
    server.start()
    migrate.upgrade(to_asyncpg_url(server.url))
    settings = BackupSettings(
        backup_dir=str(tmp / "backups"),
        POSTGRES_DATABASE_URL=server.url,
        stylebase_data_dir=str(tmp / "source"),
        backup_metrics_port=0,
    )
    return Source(server, settings, tmp)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = start_source(tmp_path)
    yield src
    src.server.stop()


def run_cli(
    settings: BackupSettings, args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """The stylebase command in this process, its settings given as the environment."""
    env = {
        "BACKUP_DIR": settings.backup_dir,
        "BACKUP_RETENTION_DAYS": repr(settings.backup_retention_days),
        "STYLEBASE_DATA_DIR": settings.stylebase_data_dir,
        "POSTGRES_DATABASE_URL": settings.database_url or "",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        capsys.readouterr()
        code = cli.main(args)
        captured = capsys.readouterr()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return code, captured.out, captured.err


def start_archiver(src: Source) -> Archiver:
    archiver = Archiver(src.url, src.settings.wal_dir, src.settings.backup_slot_name)
    archiver.start()
    return archiver


def restored(target: Path) -> EmbeddedPostgres:
    server = EmbeddedPostgres(target, durable=False)
    server.start()
    return server


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
