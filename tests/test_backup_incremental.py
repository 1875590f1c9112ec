"""Incremental base backups: smaller than a full one, restored through pg_combinebackup to
exactly the rows of their time, and kept with the backups they build on."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.backup import base, catalog, prune
from tests.backup_support import Source, restored, run_cli, snapshot, source, start_archiver

__all__ = ["source"]


def table_bytes(source: Source, backup_id: str) -> int:
    directory = catalog.backup_path(source.settings.base_dir, backup_id) / "base"
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_increments_restore_exactly_and_keep_their_chain(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    archiver = start_archiver(source)
    try:
        source.write("big", 2000)
        full = base.take(source.settings, source.url)
        assert full.parent is None
        source.write("one")
        code, out, err = run_cli(source.settings, ["backup", "--incremental"], capsys)
        assert code == 0, err
        assert "incremental base backup" in out and f"on {full.id}" in out
        first = catalog.load_all(source.settings.base_dir)[-1]
        source.write("two")
        # The schedule's choice: increments while the newest full one is younger than
        # BACKUP_FULL_INTERVAL_DAYS.
        second = base.take(source.settings, source.url)
        assert second.parent == first.id
        at_two = snapshot(source.server)
        time.sleep(0.5)
        point = datetime.now(UTC)
        time.sleep(0.5)
        source.write("three")
        archiver.wait_archived()
        at_three = snapshot(source.server)
    finally:
        archiver.stop()
    tables = sum(
        p.stat().st_size
        for p in (catalog.backup_path(source.settings.base_dir, full.id) / "base").rglob("*")
        if p.is_file()
    )
    increment = sum(
        p.stat().st_size
        for p in (catalog.backup_path(source.settings.base_dir, second.id) / "base").rglob("*")
        if p.is_file()
    )
    assert increment < tables / 2, (increment, tables)

    for label, to, expected in (("point", point, at_two), ("latest", None, at_three)):
        target = source.tmp / f"restored-{label}" / "postgres"
        args = ["--latest"] if to is None else ["--to", to.isoformat()]
        code, out, err = run_cli(
            source.settings, ["restore", *args, "--target", str(target)], capsys
        )
        assert code == 0, err
        assert f"restored base backup {second.id}" in out
        server = restored(target)
        try:
            assert snapshot(server) == expected
        finally:
            server.stop()

    # A window that opens after the newest backup keeps it, and so the chain it needs.
    result = prune.prune(
        source.settings_with(backup_retention_days=1e-9), now=catalog.now() + timedelta(days=1)
    )
    assert result.kept == [full.id, first.id, second.id]
    assert result.deleted_backups == []
