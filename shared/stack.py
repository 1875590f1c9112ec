"""'stylebase up': the database (embedded unless configured), migrations, the four gRPC
services, and the HTTP API over them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.backup.schedule import BackupDaemon
from shared.backup.settings import BackupSettings
from shared.backup.source import embedded_url
from shared.db import migrate
from shared.embedded.ports import port_in_use
from shared.embedded.postgres import EmbeddedPostgres, EmbeddedPostgresError
from shared.settings import SERVICES, StackSettings, to_asyncpg_url, to_libpq_url

log = logging.getLogger(__name__)

# Beyond GRPC_GRACE_SECONDS, what a stopping service gets for its background tasks and
# cleanups (each bounded in shared.grpc.server) before SIGKILL.
STOP_MARGIN_SECONDS = 10.0


class StackError(RuntimeError):
    """A bad environment: one clear line for the operator, nothing half-created."""


def check_ports(settings: StackSettings) -> None:
    for service in SERVICES:
        port = settings.port_of(service)
        if port and port_in_use(port, settings.grpc_host):
            raise StackError(
                f"port {port} is in use; set {service.upper()}_PORT to a free port "
                f"for the {service} service"
            )
    if settings.http_api_port and port_in_use(settings.http_api_port, settings.grpc_host):
        raise StackError(
            f"port {settings.http_api_port} is in use; set HTTP_API_PORT to a free port "
            "for the HTTP API (0 leaves it out)"
        )


async def check_pgvector(url: str) -> None:
    host = urlsplit(to_libpq_url(url)).hostname or "the database host"
    try:
        conn = await asyncpg.connect(to_libpq_url(url), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackError(f"cannot connect to PostgreSQL on {host}: {exc}") from exc
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
        )
    finally:
        await conn.close()
    if not available:
        raise StackError(
            f"pgvector is not available on {host}; install it or unset DATABASE_URL "
            "to use the embedded server"
        )


def _child_env(settings: StackSettings, database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env["POSTGRES_DATABASE_URL"] = database_url
    env["GRPC_HOST"] = settings.grpc_host
    for service in SERVICES:
        env[f"{service.upper()}_PORT"] = str(settings.port_of(service))
    env["HTTP_API_PORT"] = str(settings.http_api_port)
    return env


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: stop where start-up is, clean up, exit 0."""


class Signals:
    """Records SIGINT and SIGTERM; start-up checks between (and inside) its steps.

    Nothing is raised from the handler itself: an exception landing in the middle of initdb,
    a migration or a Popen would leave a half-made cluster or a child no one tracks.
    """

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise StopRequested


def _wait_serving(
    target: str, process: subprocess.Popen[bytes], name: str, timeout: float, signals: Signals
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            signals.check()
            if process.poll() is not None:
                raise StackError(f"{name} exited with code {process.returncode}; see its log above")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise StackError(f"{name} did not report SERVING on {target} within {timeout:.0f} s")


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float, signals: Signals
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        signals.check()
        if process.poll() is not None:
            raise StackError(f"http_api exited with code {process.returncode}; see its log above")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise StackError(f"http_api was not ready on {url} within {timeout:.0f} s")


def _spawn(service: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C at the terminal reaches only this supervisor, which then
    # sends each child one SIGTERM, instead of every child getting SIGINT and SIGTERM both.
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"], env=env, start_new_session=True
    )


def _stop_children(children: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    """One SIGTERM each, then grace plus a margin for their cleanups, then SIGKILL."""
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
    for name, process in children.items():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", name, grace)
            process.kill()
            process.wait()


def up(settings: StackSettings) -> int:
    """Start everything, print where it listens, and run until Ctrl-C or SIGTERM."""
    check_ports(settings)
    signals = Signals()
    signals.install()
    children: dict[str, subprocess.Popen[bytes]] = {}
    embedded: list[EmbeddedPostgres] = []
    backups: list[BackupDaemon] = []
    try:
        _start(settings, signals, children, embedded, backups)
        while not signals.requested:
            for name, process in children.items():
                if process.poll() is not None:
                    raise StackError(f"{name} exited with code {process.returncode}")
            time.sleep(0.2)
        print("stopping Stylebase…", flush=True)
        return 0
    except StopRequested:
        print("start-up interrupted; stopping Stylebase…", flush=True)
        return 0
    except StackError:
        # A child or initdb the same Ctrl-C reached fails start-up; the stop was still asked for.
        if signals.requested:
            print("stopping Stylebase…", flush=True)
            return 0
        raise
    finally:
        # The HTTP API first: its requests in flight still need the services under it.
        api = {name: p for name, p in children.items() if name == "http_api"}
        _stop_children(api, settings.grpc_grace_seconds)
        _stop_children(children, settings.grpc_grace_seconds)
        for daemon in backups:
            daemon.stop()  # before the server: pg_receivewal flushes what it has and exits
        for server in embedded:
            server.stop()


def _start(
    settings: StackSettings,
    signals: Signals,
    children: dict[str, subprocess.Popen[bytes]],
    embedded: list[EmbeddedPostgres],
    backups: list[BackupDaemon],
) -> None:
    """Each step leaves what it made in children, embedded or backups, for up() to stop."""
    if settings.database_url is None:
        pgdata = Path(settings.stylebase_data_dir) / "postgres"
        server = EmbeddedPostgres(pgdata, settings.embedded_postgres_port)
        try:
            database_url = to_asyncpg_url(server.start())
        except EmbeddedPostgresError as exc:
            raise StackError(str(exc)) from exc
        finally:
            embedded.append(server)  # stop() is a no-op when it never started
        log.info(
            "embedded PostgreSQL with pgvector on 127.0.0.1:%s (data in %s)", server.port, pgdata
        )
    else:
        database_url = settings.database_url
    signals.check()
    asyncio.run(check_pgvector(database_url))
    signals.check()
    migrate.upgrade(database_url)
    signals.check()
    if embedded:
        backups.append(_start_backups(settings, embedded[0]))
    _after_migrate(database_url, settings)
    env = _child_env(settings, database_url)
    for service in SERVICES:
        signals.check()
        children[service] = _spawn(service, env)
    for service in SERVICES:
        target = f"127.0.0.1:{settings.port_of(service)}"
        _wait_serving(target, children[service], service, 60, signals)
    if settings.http_api_port:
        # Last: its readiness is that of the four it stands on.
        children["http_api"] = _spawn("http_api", env)
        url = f"http://127.0.0.1:{settings.http_api_port}"
        _wait_ready(url, children["http_api"], 60, signals)
    _print_banner(settings, database_url, bool(embedded))


def _start_backups(settings: StackSettings, server: EmbeddedPostgres) -> BackupDaemon:
    """WAL archiving (BACKUP_WAL_ARCHIVE) and the base backup schedule of the embedded server,
    in background threads: the services start meanwhile."""
    backup_settings = BackupSettings(stylebase_data_dir=settings.stylebase_data_dir)
    daemon = BackupDaemon(backup_settings, embedded_url(server.port))
    daemon.start()
    log.info(
        "backups in %s (WAL archiving %s, a base backup every %g h)",
        backup_settings.root,
        "on" if backup_settings.backup_wal_archive else "off",
        backup_settings.backup_interval_hours,
    )
    return daemon


def _after_migrate(database_url: str, settings: StackSettings) -> None:
    """On first start (no artists yet), load the demo dataset when STYLEBASE_SEED_DEMO is true."""
    if not settings.stylebase_seed_demo:
        return
    from services.profile_store.app import Settings
    from services.profile_store.seed import seed

    store_settings = Settings(POSTGRES_DATABASE_URL=database_url)
    # The gateway is not up yet; the store's relay delivers the invalidations later.
    loaded = asyncio.run(seed(store_settings, only_if_empty=True, notify_gateway=False))
    if loaded:
        log.info("loaded the demo dataset: %d drummers and producers", loaded)


def _print_banner(settings: StackSettings, database_url: str, embedded: bool) -> None:
    where = urlsplit(to_libpq_url(database_url))
    lines = ["Stylebase is up:"]
    for service in SERVICES:
        lines.append(f"  {service:<14} {settings.grpc_host}:{settings.port_of(service)}")
    if settings.http_api_port:
        lines.append(f"  {'http_api':<14} http://{settings.grpc_host}:{settings.http_api_port}")
    lines.append(
        f"  postgres       {where.hostname}:{where.port} ({'embedded' if embedded else 'external'})"
    )
    redis = settings.redis_url or "not set: cache gateway uses its in-process tier only"
    lines.append(f"  redis          {redis}")
    lines.append("Try:")
    lines.append(f"  grpcurl -plaintext 127.0.0.1:{settings.port_of('profile_store')} list")
    if settings.http_api_port:
        api = f"http://127.0.0.1:{settings.http_api_port}"
        lines.append(f"  curl '{api}/api/v1/similar/J%20Dilla?limit=5'")
        lines.append(f"  open {api}/docs for the interactive API docs")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)
