"""'stylebase up' end to end: the embedded database, four gRPC service processes and the HTTP
API, the real grpcurl and a real HTTP client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.embedded.ports import free_port, port_in_use
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import SERVICES

FULL_NAMES = {
    "profile_store": "stylebase.profile_store.v1.ProfileStoreService",
    "similarity": "stylebase.similarity.v1.SimilarityService",
    "analytics": "stylebase.analytics.v1.AnalyticsService",
    "cache_gateway": "stylebase.cache_gateway.v1.CacheGatewayService",
}
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


def _stack_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], dict[str, int]]:
    ports: dict[str, int]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "POSTGRES_DATABASE_URL", "REDIS_URL")
    }
    ports = {service: free_port() for service in (*SERVICES, "http_api")}
    env.update({f"{s.upper()}_PORT": str(p) for s, p in ports.items()})
    env.update(
        STYLEBASE_DATA_DIR=str(tmp_path / "data"), GRPC_GRACE_SECONDS="1", LOG_LEVEL="WARNING"
    )
    env.update(extra)
    return env, ports


def _stylebase(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def _grpcurl(*args: str) -> str:
    result = subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Up:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    banner: str
    data_dir: Path


def _start_up(env: dict[str, str]) -> subprocess.Popen[str]:
    # Its own session, as a shell gives a foreground job: the tests signal the whole group,
    # as Ctrl-C at a terminal does.
    return subprocess.Popen(
        _stylebase("up"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _children(process: subprocess.Popen[str]) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(process.pid), "-f", "services\\."], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in found]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ctrl_c(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGINT to the process group, as the terminal sends it; the exit code and the output."""
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    return process.returncode, rest


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """The stack as a newcomer's 'make run' starts it: no database URL, no Redis."""
    tmp_path = tmp_path_factory.mktemp("stack")
    env, ports = _stack_env(tmp_path)
    process = _start_up(env)
    assert process.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        banner.append(line)
        if line.startswith("Ctrl-C stops everything"):
            break
    assert any("Stylebase is up" in line for line in banner), "".join(banner)
    yield Up(process, ports, "".join(banner), tmp_path / "data")
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def test_up_prints_where_each_service_listens(stack: Up) -> None:
    for service, port in stack.ports.items():
        assert f"{service}" in stack.banner and f"127.0.0.1:{port}" in stack.banner
    assert "(embedded)" in stack.banner
    assert "in-process tier only" in stack.banner
    assert "grpcurl -plaintext" in stack.banner
    assert f"curl 'http://127.0.0.1:{stack.ports['http_api']}/api/v1/similar/" in stack.banner


def test_the_printed_curl_line_answers_from_the_demo_data(stack: Up) -> None:
    url = f"http://127.0.0.1:{stack.ports['http_api']}/api/v1/similar/J%20Dilla?limit=5"
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["artist"] == "J Dilla" and len(body["similar_artists"]) == 5


@pytest.mark.parametrize("service", SERVICES)
def test_grpcurl_lists_describes_and_checks_health(stack: Up, service: str) -> None:
    target = f"127.0.0.1:{stack.ports[service]}"
    listed = _grpcurl(target, "list").split()
    assert FULL_NAMES[service] in listed
    assert "grpc.health.v1.Health" in listed
    described = _grpcurl(target, "describe", FULL_NAMES[service])
    assert "is a service" in described and "rpc " in described
    health = _grpcurl(
        "-d", f'{{"service": "{FULL_NAMES[service]}"}}', target, "grpc.health.v1.Health/Check"
    )
    assert '"status": "SERVING"' in health
    listed_health = json.loads(_grpcurl(target, "grpc.health.v1.Health/List"))["statuses"]
    assert listed_health[FULL_NAMES[service]] == {"status": "SERVING"}


def test_each_service_is_its_own_process(stack: Up) -> None:
    assert len(_children(stack.process)) == len(SERVICES) + 1  # and the HTTP API


def test_up_archives_wal_and_takes_a_base_backup(stack: Up) -> None:
    backups = stack.data_dir / "backups"
    deadline = time.monotonic() + 60
    while not list((backups / "base").glob("*.json")) or not list(
        (backups / "wal").glob("*.partial")
    ):
        assert time.monotonic() < deadline, "no base backup or WAL archive within 60 s"
        time.sleep(0.2)
    (record,) = (backups / "base").glob("*.json")
    assert json.loads(record.read_text())["verified"] is True


def test_ctrl_c_stops_everything(stack: Up) -> None:
    children = _children(stack.process)
    code, output = _ctrl_c(stack.process)
    left = [pid for pid in children if _alive(pid)]
    postgres_running = (stack.data_dir / "postgres" / "postmaster.pid").exists()
    print(
        f"ctrl-c after start-up: exit {code}, children {len(children)}, left {len(left)}, "
        f"postgres running {postgres_running}, tracebacks {output.count('Traceback')}"
    )
    assert code == 0, output
    assert "Traceback" not in output, output
    assert not left and not postgres_running
    for port in stack.ports.values():
        assert not port_in_use(port)


def test_ctrl_c_during_start_up_stops_it_at_once(tmp_path: Path) -> None:
    env, ports = _stack_env(tmp_path, STYLEBASE_SEED_DEMO="false")
    process = _start_up(env)
    try:
        deadline = time.monotonic() + 120
        while len(children := _children(process)) < len(SERVICES):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, output = _ctrl_c(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    left = [pid for pid in children if _alive(pid)]
    postgres_running = (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
    print(
        f"ctrl-c during start-up: exit {code}, children {len(children)}, left {len(left)}, "
        f"postgres running {postgres_running}, came up anyway {'Stylebase is up' in output}, "
        f"tracebacks {output.count('Traceback')}"
    )
    assert code == 0, output
    assert "Stylebase is up" not in output, output
    assert "Traceback" not in output, output
    assert not left and not postgres_running
    for port in ports.values():
        assert not port_in_use(port)


def _up_fails(env: dict[str, str]) -> str:
    result = subprocess.run(_stylebase("up"), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    env, _ = _stack_env(tmp_path)
    error = _up_fails(env)
    assert f"{data} is a file" in error and "STYLEBASE_DATA_DIR" in error


def test_database_dir_that_is_not_a_cluster_is_refused(tmp_path: Path) -> None:
    pgdata = tmp_path / "data" / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "notes.txt").write_text("mine")
    env, _ = _stack_env(tmp_path)
    error = _up_fails(env)
    assert str(pgdata) in error and "not a PostgreSQL data directory" in error
    assert (pgdata / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("service", "variable"), [("analytics", "ANALYTICS_PORT"), ("http_api", "HTTP_API_PORT")]
)
def test_port_in_use_names_the_port_and_its_variable(
    tmp_path: Path, service: str, variable: str
) -> None:
    env, ports = _stack_env(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[service]))
        busy.listen()
        error = _up_fails(env)
    assert f"port {ports[service]} is in use" in error and variable in error
    assert not (tmp_path / "data").exists(), "nothing is created before the ports are known free"


def test_database_without_pgvector_is_refused(tmp_path: Path, postgres: EmbeddedPostgres) -> None:
    # An extension path with no vector.control: this server then has no pgvector to offer.
    empty = tmp_path / "ext"
    (empty / "extension").mkdir(parents=True)
    # The server runs as its own user: it must be able to reach the folder.
    for folder in [empty / "extension", empty, *empty.parents]:
        folder.chmod(folder.stat().st_mode | 0o055)
    url = f"{postgres.url}?extension_control_path={empty}"
    env, _ = _stack_env(tmp_path, DATABASE_URL=url)
    error = _up_fails(env)
    assert "pgvector is not available on 127.0.0.1; install it or unset DATABASE_URL" in error
