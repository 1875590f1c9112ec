"""The restore drill: a point in time between two rounds of writes, then the latest after a
crash of the source; each compared row by row with what the source held at that point."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from shared.backup.tools import server_user
from tests.backup_support import Source, restored, run_cli, snapshot, source, start_archiver

__all__ = ["source"]


def test_restore_to_a_point_in_time_and_to_the_latest_after_a_crash(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    archiver = start_archiver(source)
    try:
        source.write("t1")
        code, out, err = run_cli(source.settings, ["backup"], capsys)
        assert code == 0, err
        assert "verified; needs WAL" in out
        source.write("t2")
        at_t2 = snapshot(source.server)
        time.sleep(0.5)
        point = datetime.now(UTC)
        time.sleep(0.5)
        source.write("t3")
        archiver.wait_archived()

        target = source.tmp / "restored-t2" / "postgres"
        code, out, err = run_cli(
            source.settings,
            ["restore", "--to", point.isoformat(), "--target", str(target)],
            capsys,
        )
        assert code == 0, err
        assert f"STYLEBASE_DATA_DIR={target.parent}" in out
        server = restored(target)
        try:
            assert snapshot(server) == at_t2
            assert server.psql("SELECT pg_is_in_recovery()").strip() == "f"
            assert (target / "recovery.signal").exists() is False
        finally:
            server.stop()

        source.write("t4")
        archiver.wait_archived()
        at_crash = snapshot(source.server)
    finally:
        archiver.stop()
    # A crash of the source: what the archive flushed is all a restore may count on.
    source.server.stop("immediate")
    assert list(source.settings.wal_dir.glob("*.partial")), "the newest segment is partial"

    latest = source.tmp / "restored-latest" / "postgres"
    code, out, err = run_cli(
        source.settings, ["restore", "--latest", "--target", str(latest)], capsys
    )
    assert code == 0, err
    assert "last transaction:" in out
    server = restored(latest)
    try:
        assert snapshot(server) == at_crash
        assert len(at_crash["artists"]) == 20
        # PostgreSQL's own demands on a data directory, and the user it runs as under root.
        assert latest.stat().st_mode & 0o777 == 0o700
        user = server_user()
        if user is not None:
            assert latest.stat().st_uid == user.pw_uid
    finally:
        server.stop()
