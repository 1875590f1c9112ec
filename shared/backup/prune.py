"""Retention: keep BACKUP_RETENTION_DAYS of recovery window, delete what no restore needs."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.backup import catalog
from shared.backup.catalog import BackupRecord
from shared.backup.lock import exclusive
from shared.backup.settings import BackupSettings
from shared.backup.tools import check_directory

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    kept: list[str] = field(default_factory=list)
    deleted_backups: list[str] = field(default_factory=list)
    deleted_wal: int = 0
    freed_bytes: int = 0


def plan(records: list[BackupRecord], window_start: datetime) -> list[BackupRecord]:
    """The backups to delete: all those older than the newest verified backup that ended
    before the window opened (it is the base for the window's first moments). Without one,
    nothing old enough is needed by the window and only the newest verified is sure to be
    kept."""
    verified = [r for r in records if r.verified]
    anchors = [r for r in verified if r.end <= window_start]
    if anchors:
        anchor = anchors[-1]
    elif verified:
        anchor = verified[0]
    else:
        return []  # nothing verified: deleting anything could leave no restorable backup
    doomed = {r.id: r for r in records if r.end < anchor.end}
    # A kept increment needs the backups it builds on.
    for record in records:
        if record.id in doomed:
            continue
        for link in catalog.chain(records, record) if _complete(records, record) else []:
            doomed.pop(link.id, None)
    return [r for r in records if r.id in doomed]


def _complete(records: list[BackupRecord], record: BackupRecord) -> bool:
    try:
        catalog.chain(records, record)
    except ValueError:
        return False
    return True


def prune(settings: BackupSettings, *, now: datetime | None = None) -> PruneResult:
    check_directory(settings.root, "BACKUP_DIR")
    result = PruneResult()
    if not settings.base_dir.is_dir():
        return result
    window_start = (now or catalog.now()) - timedelta(seconds=settings.retention_seconds)
    with exclusive(settings.root, "prune"):
        records = catalog.load_all(settings.base_dir)
        doomed = plan(records, window_start)
        doomed_ids = {r.id for r in doomed}
        for record in doomed:
            path = catalog.backup_path(settings.base_dir, record.id)
            result.freed_bytes += record.size_bytes
            shutil.rmtree(path)
            catalog.record_path(settings.base_dir, record.id).unlink(missing_ok=True)
            result.deleted_backups.append(record.id)
        kept = [r for r in records if r.id not in doomed_ids]
        result.kept = [r.id for r in kept]
        if kept:
            oldest_start = min(
                catalog.parse_lsn(r.start_lsn) // catalog.WAL_SEGMENT_SIZE for r in kept
            )
            result.deleted_wal, freed = _prune_wal(settings, oldest_start)
            result.freed_bytes += freed
    log.info(
        "prune: kept %d base backups, deleted %d and %d WAL segments (%.1f MB)",
        len(result.kept),
        len(result.deleted_backups),
        result.deleted_wal,
        result.freed_bytes / 1e6,
    )
    return result


def _prune_wal(settings: BackupSettings, oldest_needed: int) -> tuple[int, int]:
    """Segments before the oldest kept backup's start: no kept base can replay from them.
    History files stay (they are tiny and recovery needs them to follow timelines)."""
    deleted = freed = 0
    if not settings.wal_dir.is_dir():
        return 0, 0
    for path in settings.wal_dir.iterdir():
        parsed = catalog.segment_number(path.name)
        if parsed is None or path.name.endswith(".partial") or parsed[1] >= oldest_needed:
            continue
        freed += path.stat().st_size
        path.unlink()
        deleted += 1
    return deleted, freed
