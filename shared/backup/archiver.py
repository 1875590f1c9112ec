"""Continuous WAL archiving: pg_receivewal on a replication slot, restarted when it dies.

The slot makes the server keep every segment until pg_receivewal has flushed it, so a dead
or restarting archiver delays archiving but never loses WAL (the server's pg_wal grows
meanwhile). --synchronous flushes each write and reports it at once: what the lag gauge
shows is what a restore could use.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

from shared.backup import catalog
from shared.backup.metrics import ARCHIVER_RESTARTS, ARCHIVER_UP, WAL_ARCHIVE_LAG
from shared.backup.tools import BackupError, check_directory, psql, run, tool

log = logging.getLogger(__name__)

APPLICATION_NAME = "stylebase_archiver"
# Between restarts of a pg_receivewal that exits: quick at first, then no busier than this.
MAX_BACKOFF_SECONDS = 30.0


def ensure_slot(url: str, slot: str) -> None:
    run(
        [
            tool("pg_receivewal"),
            "-d",
            url,
            "--slot",
            slot,
            "--create-slot",
            "--if-not-exists",
        ]
    )


def _drain(process: subprocess.Popen[bytes], last_line: list[str]) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode(errors="replace").strip()
        if line:
            # On SIGTERM it reports that the current segment stays .partial: expected.
            level = logging.INFO if "not renaming" in line else logging.WARNING
            log.log(level, "pg_receivewal: %s", line)
            last_line[:] = [line]


def _with_application_name(url: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}application_name={APPLICATION_NAME}"


class Archiver:
    """Runs pg_receivewal into wal_dir until stop(); a background thread supervises it."""

    def __init__(self, url: str, wal_dir: Path, slot: str, *, lag_interval: float = 5.0) -> None:
        self.url = url
        self.wal_dir = wal_dir
        self.slot = slot
        self.lag_interval = lag_interval
        self.restarts = 0
        self._stop = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> None:
        check_directory(self.wal_dir, "BACKUP_DIR")
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._supervise, name="wal-archiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            # SIGTERM: pg_receivewal flushes what it has and exits cleanly.
            process.terminate()
        if self._thread is not None:
            self._thread.join(timeout)
        ARCHIVER_UP.set(0)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                tool("pg_receivewal"),
                "-d",
                _with_application_name(self.url),
                "-D",
                str(self.wal_dir),
                "--slot",
                self.slot,
                "--synchronous",
                "--status-interval",
                "1",
                "--no-password",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C at the terminal reaches the supervisor, which stops
            # it, rather than killing it behind the supervisor's back.
            start_new_session=True,
        )

    def _supervise(self) -> None:
        backoff = 0.5
        last_lag = 0.0
        while not self._stop.is_set():
            try:
                ensure_slot(self.url, self.slot)
                process = self._spawn()
            except (BackupError, OSError) as exc:
                log.warning("WAL archiver cannot start: %s; retrying in %.0f s", exc, backoff)
                ARCHIVER_UP.set(0)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            with self._lock:
                self._process = process
            last_line: list[str] = []
            # Drained as it comes: a full pipe would block pg_receivewal in its retry messages
            # during a long outage of the server.
            drain = threading.Thread(
                target=_drain, args=(process, last_line), name="wal-archiver-log", daemon=True
            )
            drain.start()
            ARCHIVER_UP.set(1)
            started = time.monotonic()
            while process.poll() is None and not self._stop.is_set():
                if time.monotonic() - last_lag >= self.lag_interval:
                    last_lag = time.monotonic()
                    self._record_lag()
                self._stop.wait(0.2)
            if self._stop.is_set():
                # SIGTERM (stop() may have sent it already, or not seen this process yet); its
                # last words are logged before stop() returns.
                if process.poll() is None:
                    process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                drain.join(2)
                break
            ARCHIVER_UP.set(0)
            drain.join(2)
            reason = last_line[-1] if last_line else "no message"
            log.warning("pg_receivewal exited with %s (%s); restarting", process.returncode, reason)
            self.restarts += 1
            ARCHIVER_RESTARTS.inc()
            if time.monotonic() - started > 60:
                backoff = 0.5  # it ran for a while: this is a new failure, not the same one
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        ARCHIVER_UP.set(0)

    def lag_bytes(self) -> int | None:
        """Bytes of WAL the server has written that the archive has not flushed yet."""
        try:
            value = psql(
                self.url,
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.flush_lsn, "
                "s.restart_lsn)) FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
                f"ON r.pid = s.active_pid WHERE s.slot_name = '{self.slot}'",
            )
        except BackupError:
            return None
        return int(float(value)) if value else None

    def _record_lag(self) -> None:
        lag = self.lag_bytes()
        if lag is not None:
            WAL_ARCHIVE_LAG.set(lag)

    def wait_archived(self, timeout: float = 30.0) -> None:
        """Until the archive holds everything the server has written so far (tests, drills)."""
        target = catalog.parse_lsn(psql(self.url, "SELECT pg_current_wal_lsn()"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flushed = psql(
                self.url,
                "SELECT r.flush_lsn FROM pg_replication_slots s JOIN pg_stat_replication r "
                f"ON r.pid = s.active_pid WHERE s.slot_name = '{self.slot}'",
            )
            if flushed and catalog.parse_lsn(flushed) >= target:
                return
            time.sleep(0.1)
        raise BackupError(f"the WAL archive did not reach {catalog.format_lsn(target)} in time")
