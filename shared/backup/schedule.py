"""The backup schedule and the archiver, run beside the stack (or alone: 'backups run')."""

from __future__ import annotations

import logging
import threading

from shared.backup import base, catalog, prune
from shared.backup.archiver import Archiver
from shared.backup.metrics import BACKUP_FAILURES, LAST_BACKUP, MetricsServer
from shared.backup.settings import BackupSettings
from shared.backup.tools import BackupError

log = logging.getLogger(__name__)

# After a failed scheduled backup: try again this soon rather than a whole interval later.
RETRY_SECONDS = 600.0


class Schedule:
    """A base backup whenever the newest is older than BACKUP_INTERVAL_HOURS, then a prune.

    A thread: start-up of the services does not wait for a backup, and stop() ends a
    running pg_basebackup (its partial copy is removed) instead of waiting it out."""

    def __init__(self, settings: BackupSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.taken = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="backup-schedule", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def seconds_until_due(self) -> float:
        verified = [r for r in catalog.load_all(self.settings.base_dir) if r.verified]
        if not verified:
            return 0.0
        LAST_BACKUP.set(verified[-1].end.timestamp())
        age = (catalog.now() - verified[-1].end).total_seconds()
        return max(0.0, self.settings.interval_seconds - age)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.seconds_until_due()
            except (OSError, ValueError) as exc:
                log.warning("backup catalog unreadable: %s", exc)
                wait = RETRY_SECONDS
            if wait > 0:
                self._stop.wait(wait)
                continue
            try:
                record = base.take(self.settings, self.url, stop=self._stop)
                self.taken += 1
                LAST_BACKUP.set(record.end.timestamp())
                prune.prune(self.settings)
            except (BackupError, OSError) as exc:
                if self._stop.is_set():
                    return
                BACKUP_FAILURES.inc()
                log.error("scheduled base backup failed: %s", exc)
                self._stop.wait(min(RETRY_SECONDS, self.settings.interval_seconds))


class BackupDaemon:
    """The archiver (when BACKUP_WAL_ARCHIVE), the schedule, and their metrics endpoint."""

    def __init__(self, settings: BackupSettings, url: str) -> None:
        self.settings = settings
        self.archiver = (
            Archiver(url, settings.wal_dir, settings.backup_slot_name)
            if settings.backup_wal_archive
            else None
        )
        self.schedule = Schedule(settings, url)
        self._metrics: MetricsServer | None = None

    def start(self) -> None:
        self._metrics = MetricsServer(
            self.settings.backup_metrics_port, self.settings.backup_metrics_host
        )
        if self.archiver is not None:
            self.archiver.start()
        self.schedule.start()

    def stop(self) -> None:
        self.schedule.stop()
        if self.archiver is not None:
            self.archiver.stop()
        if self._metrics is not None:
            self._metrics.stop()
