"""Base backups: pg_basebackup into BACKUP_DIR/base, checked by pg_verifybackup before done."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

from shared.backup import catalog
from shared.backup.catalog import BackupRecord
from shared.backup.lock import exclusive
from shared.backup.progress import ProgressFn, quiet
from shared.backup.settings import BackupSettings
from shared.backup.tools import BackupError, check_directory, first_error, no_space, psql, run, tool

log = logging.getLogger(__name__)

TOOLS_MAJOR = 18
_PROGRESS = re.compile(r"(\d+)/(\d+) kB")
# The copy needs about the database's size; the margin covers the WAL streamed alongside.
SPACE_MARGIN = 1.1


def take(
    settings: BackupSettings,
    url: str,
    *,
    progress: ProgressFn = quiet,
    stop: threading.Event | None = None,
    incremental: bool | None = None,
) -> BackupRecord:
    """A verified base backup. incremental: True forces one on the newest verified backup,
    False a full one, None follows BACKUP_FULL_INTERVAL_DAYS (and falls back to a full
    backup when the server cannot give an incremental one)."""
    check_directory(settings.root, "BACKUP_DIR")
    try:
        settings.base_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise no_space(exc, settings.root) from exc
    with exclusive(settings.root, "take the backup"):
        for stale in settings.base_dir.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
        parent = _parent(settings, incremental)
        if parent is not None:
            try:
                return _take_locked(settings, url, progress, stop, parent)
            except BackupError as exc:
                if incremental or (stop is not None and stop.is_set()):
                    raise
                log.warning("incremental backup not possible (%s); taking a full one", exc)
        return _take_locked(settings, url, progress, stop, None)


def _parent(settings: BackupSettings, incremental: bool | None) -> BackupRecord | None:
    if incremental is False:
        return None
    verified = [r for r in catalog.load_all(settings.base_dir) if r.verified]
    if not verified:
        if incremental:
            raise BackupError(f"no verified base backup in {settings.base_dir} to build on")
        return None
    if incremental is None:
        fulls = [r for r in verified if r.parent is None]
        interval = settings.full_interval_seconds
        if not fulls or interval == 0:
            return None
        if (catalog.now() - fulls[-1].end).total_seconds() >= interval:
            return None
    return verified[-1]


def _server_facts(url: str) -> tuple[int, str, int]:
    row = psql(
        url,
        "SELECT current_setting('server_version_num'), (SELECT system_identifier FROM "
        "pg_control_system()), (SELECT sum(pg_database_size(oid)) FROM pg_database)",
    )
    version, system_identifier, size = row.split("|")
    return int(version), system_identifier, int(size)


def _take_locked(
    settings: BackupSettings,
    url: str,
    progress: ProgressFn,
    stop: threading.Event | None,
    parent: BackupRecord | None,
) -> BackupRecord:
    version, system_identifier, database_bytes = _server_facts(url)
    if parent is not None and parent.system_identifier != system_identifier:
        raise BackupError(f"base backup {parent.id} is of another cluster")
    free = shutil.disk_usage(settings.base_dir).free
    if free < database_bytes * SPACE_MARGIN:
        raise BackupError(
            f"no space left for a backup in {settings.base_dir}: the database holds "
            f"{database_bytes / 1e6:.0f} MB, {free / 1e6:.0f} MB are free; free space or set "
            "BACKUP_DIR elsewhere"
        )
    backup_id = catalog.now().strftime("%Y%m%dT%H%M%SZ")
    while (settings.base_dir / backup_id).exists():
        backup_id += "x"  # two in one second: tests, or a retried schedule
    partial = settings.base_dir / f"{backup_id}.tmp"
    started = time.monotonic()
    try:
        manifest = (
            catalog.backup_path(settings.base_dir, parent.id) / "backup_manifest"
            if parent is not None
            else None
        )
        _basebackup(url, partial, backup_id, progress, stop, manifest)
        end_time = catalog.now()
        record = _describe(partial, backup_id, end_time, version, system_identifier)
        record.parent = parent.id if parent is not None else None
        record.duration_seconds = round(time.monotonic() - started, 3)
        verify_directory(partial, record)
        partial.rename(settings.base_dir / backup_id)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    catalog.save(settings.base_dir, record)
    log.info(
        "%s base backup %s: %.1f MB in %.1f s, needs WAL %s to %s",
        record.kind,
        record.id,
        record.size_bytes / 1e6,
        record.duration_seconds,
        record.start_wal,
        record.end_wal,
    )
    return record


def _basebackup(
    url: str,
    target: Path,
    label: str,
    progress: ProgressFn,
    stop: threading.Event | None,
    parent_manifest: Path | None,
) -> None:
    # -X stream puts the WAL the copy needs inside it: a full backup restores on its own (an
    # increment with its chain), with or without the archive. -c fast: no waiting for the
    # next scheduled checkpoint.
    incremental = ["--incremental", str(parent_manifest)] if parent_manifest else []
    process = subprocess.Popen(
        [
            tool("pg_basebackup"),
            *incremental,
            "-d",
            url,
            "-D",
            str(target),
            "-X",
            "stream",
            "-c",
            "fast",
            "-P",
            "--label",
            f"stylebase {label}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # stopped through `stop`, not by the terminal's Ctrl-C
    )
    assert process.stderr is not None
    collected: list[str] = []
    watcher = None
    if stop is not None:
        watcher = threading.Thread(target=_kill_on_stop, args=(process, stop), daemon=True)
        watcher.start()
    buffer = b""
    while True:
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            line = raw.decode(errors="replace")
            match = _PROGRESS.search(line)
            if match:
                progress(int(match.group(1)) * 1024, int(match.group(2)) * 1024)
            elif line.strip():
                collected.append(line)
    code = process.wait()
    if stop is not None and stop.is_set():
        raise BackupError("backup stopped before it finished")
    if code != 0:
        message = "\n".join(collected)
        if "No space left on device" in message:
            raise BackupError(
                f"no space left on device while writing {target}; free space or set "
                "BACKUP_DIR elsewhere"
            )
        raise BackupError(f"pg_basebackup failed: {first_error(message)}")


def _kill_on_stop(process: subprocess.Popen[bytes], stop: threading.Event) -> None:
    while process.poll() is None:
        if stop.wait(0.2):
            process.terminate()
            return


def _describe(
    directory: Path, backup_id: str, end_time: datetime, version: int, system_identifier: str
) -> BackupRecord:
    label = dict(
        line.split(": ", 1)
        for line in (directory / "backup_label").read_text().splitlines()
        if ": " in line
    )
    start_lsn = label["START WAL LOCATION"].split()[0]
    timeline = int(label["START TIMELINE"])
    manifest = json.loads((directory / "backup_manifest").read_text())
    last_range = manifest["WAL-Ranges"][-1]
    end_lsn = last_range["End-LSN"]
    start_time = datetime.strptime(label["START TIME"], "%Y-%m-%d %H:%M:%S %Z")
    return BackupRecord(
        id=backup_id,
        start_time=catalog.iso(start_time.replace(tzinfo=end_time.tzinfo)),
        end_time=end_time.isoformat(timespec="milliseconds"),
        start_lsn=start_lsn,
        end_lsn=end_lsn,
        timeline=timeline,
        start_wal=catalog.wal_file_name(timeline, catalog.parse_lsn(start_lsn)),
        end_wal=catalog.wal_file_name(int(last_range["Timeline"]), catalog.parse_lsn(end_lsn)),
        size_bytes=sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        duration_seconds=0.0,
        system_identifier=system_identifier,
        server_version=version,
        wal_parsed=version // 10000 == TOOLS_MAJOR,
    )


def verify_directory(directory: Path, record: BackupRecord) -> None:
    """pg_verifybackup: every file against the manifest's sizes and checksums, and the WAL."""
    args = [tool("pg_verifybackup"), "--quiet"]
    if not record.wal_parsed:
        args.append("--no-parse-wal")
    try:
        run([*args, str(directory)], timeout=3600)
    except BackupError as exc:
        record.verified = False
        record.verify_error = str(exc).removeprefix("pg_verifybackup failed: ")
        record.verified_at = catalog.iso(catalog.now())
        raise BackupError(
            f"base backup {record.id} failed verification: {record.verify_error}"
        ) from None
    record.verified = True
    record.verify_error = None
    record.verified_at = catalog.iso(catalog.now())


def verify(settings: BackupSettings, record: BackupRecord) -> None:
    """Re-check a stored backup and record the result beside it."""
    directory = catalog.backup_path(settings.base_dir, record.id)
    try:
        verify_directory(directory, record)
    finally:
        catalog.save(settings.base_dir, record)
