"""Readiness follows the database: its schema version and its availability, without a restart."""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc
from tests.cache_gateway_support import profile
from tests.harness import ServiceProcess, service_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Probe = Callable[[grpc.Channel], Any]


def _list(channel: grpc.Channel) -> Any:
    stub = store_grpc.ProfileStoreServiceStub(channel)
    return stub.ListArtists(store_pb.ListArtistsRequest(page_size=5), timeout=10)


def _search(channel: grpc.Channel) -> Any:
    stub = similarity_grpc.SimilarityServiceStub(channel)
    request = similarity_pb.SearchByEmbeddingRequest(embedding=profile("x").embedding)
    return stub.SearchByEmbedding(request, timeout=10)


def _stats(channel: grpc.Channel) -> Any:
    stub = analytics_grpc.AnalyticsServiceStub(channel)
    return stub.GetStats(analytics_pb.GetStatsRequest(), timeout=10)


PROBES: dict[str, Probe] = {"profile_store": _list, "similarity": _search, "analytics": _stats}


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status)
    except grpc.RpcError:
        return -1


def _code(probe: Probe, channel: grpc.Channel) -> str:
    try:
        probe(channel)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def _reaches(channel: grpc.Channel, status: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _health(channel) == status:
            return True
        time.sleep(0.1)
    return False


def _answers(channel: grpc.Channel, within: float = 60) -> None:
    """Wait until the process listens, whatever its health says."""
    deadline = time.monotonic() + within
    while _health(channel) == -1:
        assert time.monotonic() < deadline, "the service never listened"
        time.sleep(0.1)


def _launch(service: str, url: str, log: Path) -> ServiceProcess:
    """Start without waiting for SERVING, which a service on a bad schema must never report."""
    env = service_env(url, {"LOG_LEVEL": "INFO", "LOG_FORMAT": "text"})
    env[f"{service.upper()}_METRICS_PORT"] = "0"
    process = ServiceProcess(service, env, log_path=log)
    with contextlib.suppress(TimeoutError):
        process.start(timeout=1)
    return process


@pytest.fixture
def empty_database(postgres: EmbeddedPostgres) -> Iterator[str]:
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    postgres.psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{postgres.port}/{name}"
    finally:
        postgres.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_unmigrated_database_is_not_ready_until_migrated(
    empty_database: str, tmp_path: Path
) -> None:
    services = {s: _launch(s, empty_database, tmp_path / f"{s}.log") for s in PROBES}
    channels = {s: grpc.insecure_channel(p.target) for s, p in services.items()}
    try:
        for channel in channels.values():
            _answers(channel)
        time.sleep(1.5)  # several readiness checks
        before = {s: _health(channels[s]) for s in PROBES}
        codes = {
            s: collections.Counter(_code(PROBES[s], channels[s]) for _ in range(5)) for s in PROBES
        }
        logs = {s: (tmp_path / f"{s}.log").read_text() for s in PROBES}
        migrate.upgrade(empty_database)
        ready = {s: _reaches(channels[s], SERVING) for s in PROBES}
        after = {s: _code(PROBES[s], channels[s]) for s in PROBES}
        restarted = {
            s: p.process is None or p.process.poll() is not None for s, p in services.items()
        }
    finally:
        for channel in channels.values():
            channel.close()
        for process in services.values():
            process.stop()
    print("unmigrated database, health before migrating:", before)
    print("unmigrated database, calls before migrating:", codes)
    print("after migrating: SERVING", ready, "calls", after, "exited", restarted)
    head = migrate.head_revision()
    for service in PROBES:
        assert before[service] == NOT_SERVING, (service, before)
        assert set(codes[service]) <= {"UNAVAILABLE", "FAILED_PRECONDITION"}, (service, codes)
        assert f"code expects {head}; run stylebase migrate" in logs[service], logs[service]
        assert ready[service] and after[service] == "OK" and not restarted[service]


def test_database_restart_takes_readiness_down_and_back_up(
    postgres: EmbeddedPostgres, database_url: str, tmp_path: Path
) -> None:
    services = {s: _launch(s, database_url, tmp_path / f"{s}.log") for s in PROBES}
    channels = {s: grpc.insecure_channel(p.target) for s, p in services.items()}
    during: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in PROBES}
    try:
        assert all(_reaches(channels[s], SERVING) for s in PROBES)
        postgres.stop(mode="fast")
        stopped = time.monotonic()
        try:
            went_down = {}
            for service in PROBES:
                went_down[service] = _reaches(channels[service], NOT_SERVING)
                during[service][_code(PROBES[service], channels[service])] += 1
            down_after = time.monotonic() - stopped
        finally:
            postgres.start()
        started = time.monotonic()
        came_back = {s: _reaches(channels[s], SERVING) for s in PROBES}
        up_after = time.monotonic() - started
        after = {s: _code(PROBES[s], channels[s]) for s in PROBES}
        restarted = {
            s: p.process is None or p.process.poll() is not None for s, p in services.items()
        }
    finally:
        for channel in channels.values():
            channel.close()
        for process in services.values():
            process.stop()
    print(
        f"postgres restart: NOT_SERVING {went_down} (all within {down_after:.1f} s), "
        f"calls while down {during}, SERVING again {came_back} (within {up_after:.1f} s), "
        f"calls after {after}, exited {restarted}"
    )
    for service in PROBES:
        assert went_down[service] and came_back[service], service
        assert set(during[service]) <= {"UNAVAILABLE"}, during
        assert after[service] == "OK" and not restarted[service], (after, restarted)
