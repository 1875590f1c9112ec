"""Backup series, in their own registry: the supervisor serves these alone, not the
services' series (those come from each service's own endpoint)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger(__name__)
# As for the services (shared.metrics): no _created series beside each counter.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
WAL_ARCHIVE_LAG = Gauge(
    "backup_wal_archive_lag_bytes",
    "WAL the server has written that the archive has not flushed yet",
    registry=REGISTRY,
)
ARCHIVER_UP = Gauge("backup_wal_archiver_up", "1 while pg_receivewal is running", registry=REGISTRY)
ARCHIVER_RESTARTS = Counter(
    "backup_wal_archiver_restarts",
    "Times pg_receivewal exited and was restarted",
    registry=REGISTRY,
)
LAST_BACKUP = Gauge(
    "backup_last_base_backup_timestamp_seconds",
    "End time of the newest verified base backup",
    registry=REGISTRY,
)
BACKUP_FAILURES = Counter(
    "backup_base_backup_failures", "Scheduled base backups that failed", registry=REGISTRY
)


class MetricsServer:
    """The HTTP endpoint for REGISTRY; port 0 serves nothing."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._server: Any = None
        if port == 0:
            return
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            log.warning("backup metrics not served on %s:%d: %s", host, port, exc)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
