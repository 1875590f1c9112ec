"""The WAL archiver across restarts of PostgreSQL and its own SIGKILL; the schedule and the
metrics beside it."""

from __future__ import annotations

import time
import urllib.request

import pytest

from shared.backup import catalog
from shared.backup.catalog import Archive
from shared.backup.metrics import REGISTRY
from shared.backup.schedule import BackupDaemon
from shared.backup.tools import run, tool
from shared.embedded.ports import free_port
from tests.backup_support import Source, kill, restored, run_cli, snapshot, source, start_archiver

__all__ = ["source"]


def wait_for(condition: object, timeout: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_archive_has_no_gap_across_server_restarts_and_archiver_kills(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(source.settings, ["backup"], capsys)
    assert code == 0, err
    archiver = start_archiver(source)
    try:
        source.write("before-restart")
        archiver.wait_archived()
        source.server.stop("fast")
        source.server.start()
        source.write("after-restart")
        source.switch_wal()
        archiver.wait_archived()
        pid = archiver.pid
        assert pid is not None
        kill(pid)
        source.write("after-kill")
        source.switch_wal()
        wait_for(lambda: archiver.restarts >= 1 and archiver.pid not in (None, pid))
        archiver.wait_archived()
        source.server.stop("immediate")
        source.server.start()
        source.write("after-crash")
        archiver.wait_archived()
        expected = snapshot(source.server)
        assert REGISTRY.get_sample_value("backup_wal_archive_lag_bytes") is not None
    finally:
        archiver.stop()
    source.server.stop("immediate")

    # Every segment from the backup's start to the newest is there, and pg_waldump reads
    # them as one continuous stream.
    (record,) = catalog.load_all(source.settings.base_dir)
    archive = Archive.scan(source.settings.wal_dir)
    start = catalog.parse_lsn(record.start_lsn) // catalog.WAL_SEGMENT_SIZE
    assert archive.first_gap_after(start) is None
    full = sorted(p.name for p in source.settings.wal_dir.iterdir() if len(p.name) == 24)
    run([tool("pg_waldump"), "--quiet", "-p", str(source.settings.wal_dir), full[0], full[-1]])

    target = source.tmp / "restored" / "postgres"
    code, _, err = run_cli(
        source.settings, ["restore", "--latest", "--target", str(target)], capsys
    )
    assert code == 0, err
    server = restored(target)
    try:
        assert snapshot(server) == expected
    finally:
        server.stop()


def test_the_daemon_backs_up_when_due_serves_metrics_and_stops_promptly(source: Source) -> None:
    port = free_port()
    settings = source.settings_with(backup_metrics_port=port, backup_interval_hours=24.0)
    daemon = BackupDaemon(settings, source.url)
    daemon.start()
    try:
        wait_for(lambda: daemon.schedule.taken == 1, timeout=30)
        assert daemon.schedule.seconds_until_due() > 23 * 3600
        source.write("scraped")
        assert daemon.archiver is not None
        daemon.archiver.wait_archived()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = body.decode()
        assert "backup_wal_archiver_up 1.0" in text
        assert "backup_last_base_backup_timestamp_seconds" in text
        assert "backup_base_backup_failures_total 0.0" in text
        assert "_created" not in text and "grpc_server" not in text
    finally:
        started = time.monotonic()
        daemon.stop()
        assert time.monotonic() - started < 5
    # The next start finds a fresh backup and takes none.
    again = BackupDaemon(settings.model_copy(update={"backup_metrics_port": 0}), source.url)
    again.start()
    time.sleep(0.5)
    again.stop()
    assert again.schedule.taken == 0
    assert len(catalog.load_all(settings.base_dir)) == 1
