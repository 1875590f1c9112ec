"""The database fault scenarios' pieces: the services as processes, a pg_stat_activity
sampler, mixed load that records what was acknowledged, PostgreSQL stopped and started."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.embedded.postgres import DATABASE, EmbeddedPostgres
from shared.settings import to_libpq_url
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc
from tests.harness import ROOT, ServiceProcess, service_env
from tests.profile_store_support import profile

POOL_SIZE, MAX_OVERFLOW = 5, 5
POOL_CAP = POOL_SIZE + MAX_OVERFLOW
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
DB_SERVICES = ("profile_store", "similarity", "analytics")


@dataclass
class Services:
    processes: dict[str, ServiceProcess]
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self.channels:
            self.channels[service] = grpc.aio.insecure_channel(self.processes[service].target)
        return self.channels[service]

    @property
    def store(self) -> store_grpc.ProfileStoreServiceAsyncStub:
        return store_grpc.ProfileStoreServiceStub(self.channel("profile_store"))

    @property
    def similarity(self) -> similarity_grpc.SimilarityServiceAsyncStub:
        return similarity_grpc.SimilarityServiceStub(self.channel("similarity"))

    @property
    def analytics(self) -> analytics_grpc.AnalyticsServiceAsyncStub:
        return analytics_grpc.AnalyticsServiceStub(self.channel("analytics"))


@pytest.fixture(scope="module")
def services(
    database_url: str, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """The three database services (and the gateway) as processes, each with a small pool."""
    # The test server acknowledges commits before their WAL is written (synchronous_commit
    # off), which a crash loses; these tests count acknowledged writes, so commits here are
    # durable, as in production.
    postgres.psql(f'ALTER DATABASE "{DATABASE}" SET synchronous_commit = on')
    workdir: Path = tmp_path_factory.mktemp("database-faults")
    processes = {s: ServiceProcess(s, {}, log_path=workdir / f"{s}.log") for s in DB_SERVICES}
    gateway = ServiceProcess("cache_gateway", {}, log_path=workdir / "cache_gateway.log")
    for service, process in [*processes.items(), ("cache_gateway", gateway)]:
        process.env = service_env(
            database_url,
            {
                "DB_POOL_SIZE": str(POOL_SIZE),
                "DB_MAX_OVERFLOW": str(MAX_OVERFLOW),
                f"{service.upper()}_METRICS_PORT": "0",
                "CACHE_GATEWAY_TARGET": gateway.target,
                "PROFILE_STORE_TARGET": processes["profile_store"].target,
                "CACHE_INVALIDATION_TIMEOUT_MS": "500",
            },
        )
    started: list[ServiceProcess] = []
    try:
        for process in [*processes.values(), gateway]:
            started.append(process.start(timeout=60))
        yield Services({**processes, "cache_gateway": gateway})
    finally:
        for process in started:
            process.stop()
        postgres.psql(f'ALTER DATABASE "{DATABASE}" RESET synchronous_commit')


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def serving(target: str, within: float) -> bool:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.2)
    return False


class Sampler:
    """pg_stat_activity every 50 ms: the most backends and active statements per service."""

    def __init__(self, url: str, names: tuple[str, ...]) -> None:
        self.url, self.names = url, names
        self.max_backends: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def now(self, conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, int]]:
        rows = await conn.fetch(
            "SELECT application_name AS app, count(*) AS n,"
            " count(*) FILTER (WHERE state = 'active') AS active"
            " FROM pg_stat_activity WHERE application_name = ANY($1::text[])"
            " GROUP BY application_name",
            list(self.names),
        )
        return {r["app"]: r["n"] for r in rows}, {r["app"]: r["active"] for r in rows}

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "sampler"})
        try:
            while True:
                backends, _ = await self.now(conn)
                for name, n in backends.items():
                    self.max_backends[name] = max(self.max_backends[name], n)
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def active(self) -> tuple[dict[str, int], list[str]]:
        """Active statements per service, and what each of them is."""
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "sampler"})
        try:
            rows = await conn.fetch(
                "SELECT application_name, left(query, 60) AS query, wait_event_type,"
                " now() - query_start AS running FROM pg_stat_activity"
                " WHERE application_name = ANY($1::text[]) AND state = 'active'",
                list(self.names),
            )
            return (await self.now(conn))[1], [str(dict(row)) for row in rows]
        finally:
            await conn.close()

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def seed_profiles(services: Services, count: int) -> list[str]:
    names = [f"Lock {uuid.uuid4().hex[:10]}" for _ in range(count)]
    for name in names:
        await services.store.SaveStyleProfile(
            store_pb.SaveStyleProfileRequest(profile=profile(name)), timeout=30
        )
    return names


@dataclass
class Acked:
    saves: dict[str, int] = field(default_factory=dict)  # artist name -> version
    sources: list[str] = field(default_factory=list)  # url
    generations: list[str] = field(default_factory=list)  # output file


async def mixed_load(
    services: Services, *, clients: int, until: Callable[[], bool]
) -> tuple[collections.Counter[tuple[str, str]], Acked]:
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    acked = Acked()
    (known,) = await seed_profiles(services, 1)

    async def one(kind: int) -> None:
        marker = uuid.uuid4().hex
        op = ""
        try:
            if kind == 0:
                op = "GetStyleProfile"
                await services.store.GetStyleProfile(
                    store_pb.GetStyleProfileRequest(artist_name=known), timeout=2
                )
            elif kind == 1:
                op = "SaveStyleProfile"
                name = f"Save {marker}"
                reply = await services.store.SaveStyleProfile(
                    store_pb.SaveStyleProfileRequest(profile=profile(name)), timeout=2
                )
                acked.saves[name] = reply.profile.version
            elif kind == 2:
                op = "AddResearchSource"
                url = f"https://example.org/{marker}"
                source = common_pb2.ResearchSource(
                    source_type=common_pb2.SOURCE_TYPE_PAPER, url=url
                )
                await services.store.AddResearchSource(
                    store_pb.AddResearchSourceRequest(artist_name=known, source=source), timeout=2
                )
                acked.sources.append(url)
            elif kind == 3:
                op = "RecordGeneration"
                out = f"out/{marker}.mid"
                await services.analytics.RecordGeneration(
                    analytics_pb.RecordGenerationRequest(
                        provider_used="template",
                        generation_time_ms=100,
                        tokens_used=1,
                        cost_usd=0.0,
                        user_params=analytics_pb.UserParams(
                            bars=8, tempo=120.0, time_signature="4/4", variations=1
                        ),
                        output_files=[out],
                    ),
                    timeout=2,
                )
                acked.generations.append(out)
            elif kind == 4:
                op = "FindSimilarArtists"
                await services.similarity.FindSimilarArtists(
                    similarity_pb.FindSimilarArtistsRequest(artist_name=known, limit=5), timeout=2
                )
            else:
                op = "GetStats"
                await services.analytics.GetStats(analytics_pb.GetStatsRequest(), timeout=2)
            codes[(op, "OK")] += 1
        except grpc.aio.AioRpcError as error:
            codes[(op, error.code().name)] += 1

    async def client(i: int) -> None:
        n = i
        while not until():
            await one(n % 6)
            n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return codes, acked


async def check_writes(database_url: str, acked: Acked) -> tuple[int, int, int]:
    """(acknowledged, lost, applied twice) over every write the services answered OK."""
    url = to_libpq_url(database_url)
    lost = twice = 0
    conn = await asyncpg.connect(url)
    try:
        for name, version in acked.saves.items():
            found = await conn.fetch(
                "SELECT p.version FROM style_profiles p JOIN artists a ON a.id = p.artist_id"
                " WHERE a.name = $1",
                name,
            )
            lost += not found
            twice += len(found) > 1 or any(row["version"] != version for row in found)
        for source_url in acked.sources:
            n = await conn.fetchval(
                "SELECT count(*) FROM research_sources WHERE url = $1", source_url
            )
            lost += n == 0
            twice += n > 1
        for out in acked.generations:
            n = await conn.fetchval(
                "SELECT count(*) FROM generation_history WHERE output_files ? $1", out
            )
            lost += n == 0
            twice += n > 1
    finally:
        await conn.close()
    return len(acked.saves) + len(acked.sources) + len(acked.generations), lost, twice


async def pg_ctl(postgres: EmbeddedPostgres, call: str) -> None:
    """Stop or start the session's PostgreSQL from a child process, so the clients keep running
    meanwhile (pg_ctl forked from a thread of this process, where gRPC runs, can crash before it
    execs)."""
    script = (
        "import pathlib; from shared.embedded.postgres import EmbeddedPostgres; "
        f"EmbeddedPostgres(pathlib.Path({str(postgres.pgdata)!r}), {postgres.port},"
        f" durable={postgres.durable}).{call}"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=ROOT)
    assert await child.wait() == 0, f"{call} of PostgreSQL failed"
