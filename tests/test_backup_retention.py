"""Prune keeps the recovery window and the newest verified backup; a restore to a pruned
time is refused, naming the earliest point that is still reachable."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from shared.backup import base, catalog, prune
from shared.backup.catalog import Archive
from tests.backup_support import Source, run_cli, source, start_archiver

__all__ = ["source"]


def test_prune_keeps_exactly_the_window_and_refuses_restores_before_it(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    archiver = start_archiver(source)
    try:
        records = []
        for label in ("a", "b", "c"):
            source.write(label)
            records.append(base.take(source.settings, source.url, incremental=False))
            source.switch_wal()
            time.sleep(1.1)
        archiver.wait_archived()
    finally:
        archiver.stop()
    a, b, c = records
    segments_before = Archive.scan(source.settings.wal_dir).all_segments()
    b_start = catalog.parse_lsn(b.start_lsn) // catalog.WAL_SEGMENT_SIZE
    assert min(segments_before) < b_start

    # The window opens between b's end and c's: b is the base for its first moments.
    now = c.end + timedelta(seconds=0.5)
    settings = source.settings_with(backup_retention_days=(now - b.end).total_seconds() / 86_400)
    result = prune.prune(settings, now=now)
    assert result.deleted_backups == [a.id]
    assert result.kept == [b.id, c.id]
    remaining = Archive.scan(source.settings.wal_dir).all_segments()
    assert min(remaining) == b_start, "WAL before the oldest kept backup goes, the rest stays"
    assert remaining == {s for s in segments_before if s >= b_start}

    # Before b's end nothing can be reached any more: the message names the earliest point.
    between = a.end + (b.end - a.end) / 2
    code, _, err = run_cli(
        source.settings,
        ["restore", "--to", catalog.iso(between), "--target", str(source.tmp / "r")],
        capsys,
    )
    assert code == 1
    assert "before the earliest reachable point" in err
    assert catalog.iso(b.end, precise=True) in err
    assert not (source.tmp / "r").exists()

    # A window that has moved past every backup still keeps the newest verified one, even
    # when a newer one failed verification.
    c.verified = False
    catalog.save(source.settings.base_dir, c)
    result = prune.prune(source.settings_with(backup_retention_days=1e-9), now=catalog.now())
    assert result.kept == [b.id, c.id]
    code, out, _ = run_cli(
        source.settings_with(backup_retention_days=1e-6), ["backups", "prune"], capsys
    )
    assert code == 0
    assert "0 base backups" in out
    c.verified = True
    catalog.save(source.settings.base_dir, c)
    result = prune.prune(source.settings_with(backup_retention_days=1e-9), now=catalog.now())
    assert result.kept == [c.id]
    assert [r.id for r in catalog.load_all(source.settings.base_dir)] == [c.id]
