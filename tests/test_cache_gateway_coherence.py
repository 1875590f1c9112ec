"""Coherence across two gateway processes: 20 writers and 50 readers for 20 seconds each run.

Every read that starts after a save has returned must see at least that save's version;
with Redis stopped for part of the run, older reads are allowed only within the stated
staleness bound, and none once both gateways report Redis recovered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cache_gateway.app import REDIS_HEALTH_NAME, Settings
from shared.embedded.redis import RedisServer
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc
from tests.cache_gateway_support import SERVING, Store, profile, unique, until
from tests.harness import ServiceProcess, service_env, wait_serving

pytestmark = pytest.mark.slow

RUN_SECONDS = 20.0
WRITERS, READERS, ARTISTS = 20, 50, 5
GATEWAY_ENV = {"REDIS_BREAKER_SECONDS": "0.5", "LOG_LEVEL": "INFO", "LOG_FORMAT": "text"}
# Scheduling slack for a busy machine on top of the bound the gateway states.
SLACK_SECONDS = 0.5


@dataclass
class Cluster:
    redis: RedisServer
    store: Store
    gateways: list[ServiceProcess]
    bound: float


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("coherence")
    server = RedisServer(workdir / "redis")
    server.start()
    extra = {**GATEWAY_ENV, "REDIS_URL": server.url, "REDIS_KEY_PREFIX": unique("coh")}
    a = ServiceProcess("cache_gateway", {**extra}, log_path=workdir / "gateway-a.log")
    # The store waits up to 2 s for the gateway to confirm; a save it could not confirm says
    # cache_invalidated=false, and only those may be read older (clients pass min_version).
    store = Store(database_url, a.target, workdir, {"CACHE_INVALIDATION_TIMEOUT_MS": "2000"})
    extra["PROFILE_STORE_TARGET"] = store.process.target
    a.env = service_env(database_url, extra)
    b = ServiceProcess(
        "cache_gateway", service_env(database_url, extra), log_path=workdir / "b.log"
    )
    store.start()
    gateways = [a.start(), b.start()]
    for gateway in gateways:
        wait_serving(gateway.target, service=REDIS_HEALTH_NAME)
    bound = Settings().staleness_bound_seconds  # defaults; the env above does not change them
    yield Cluster(server, store, gateways, bound)
    for gateway in gateways:
        gateway.stop()
    store.process.stop()
    server.stop()


@dataclass
class Ledger:
    """Versions whose save has returned, with when, per artist."""

    returned: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    latest: dict[str, int] = field(default_factory=dict)
    # Redis up: only saves the gateway confirmed (cache_invalidated) bind readers. Redis
    # down: every save does, within the staleness bound.
    every_save_binds: bool = False
    unconfirmed_saves: int = 0
    reads: int = 0
    read_errors: int = 0
    # (read start, staleness in seconds, tier, gateway) of every read below a returned save.
    violations: list[tuple[float, float, int, int]] = field(default_factory=list)

    def saved(self, name: str, version: int) -> None:
        self.returned.setdefault(name, []).append((version, time.monotonic()))
        self.latest[name] = max(version, self.latest.get(name, 0))

    def check(
        self, name: str, required: int, reply: pb.GetStyleProfileResponse, started: float, at: int
    ) -> None:
        self.reads += 1
        got = reply.profile.version
        if got >= required:
            return
        missed = min(t for v, t in self.returned[name] if v > got and t <= started)
        self.violations.append((started, started - missed, reply.served_from, at))


async def run_workload(cluster: Cluster, stop: asyncio.Event, *, every_save_binds: bool) -> Ledger:
    ledger = Ledger(every_save_binds=every_save_binds)
    artists = [unique("Coherent") for _ in range(ARTISTS)]
    for name in artists:
        ledger.saved(name, await cluster.store.save(profile(name)))
    channels = [grpc.aio.insecure_channel(g.target) for g in cluster.gateways]
    stubs = [pb_grpc.CacheGatewayServiceStub(c) for c in channels]

    async def writer(i: int) -> None:
        seed = i * 1_000_000
        while not stop.is_set():
            name = artists[i % ARTISTS]
            seed += 1
            reply = await cluster.store.save_reply(profile(name, seed=seed))
            if reply.cache_invalidated or ledger.every_save_binds:
                ledger.saved(name, reply.profile.version)
            if not reply.cache_invalidated:
                ledger.unconfirmed_saves += 1

    async def reader(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            name = rng.choice(artists)
            at = rng.randrange(len(stubs))
            stub = stubs[at]
            started = time.monotonic()
            required = ledger.latest[name]
            try:
                reply = await stub.GetStyleProfile(
                    pb.GetStyleProfileRequest(artist_name=name), timeout=10
                )
            except grpc.aio.AioRpcError:
                ledger.read_errors += 1
                continue
            ledger.check(name, required, reply, started, at)

    tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
    tasks += [asyncio.create_task(reader(i)) for i in range(READERS)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close(None)
    return ledger


async def stats(target: str) -> pb.GetCacheStatsResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CacheGatewayServiceStub(channel)
        return await stub.GetCacheStats(pb.GetCacheStatsRequest(), timeout=10)


async def redis_serving(gateway: ServiceProcess) -> bool:
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=REDIS_HEALTH_NAME)
        reply = await stub.Check(request, timeout=5)
    return bool(reply.status == SERVING)


async def test_two_gateways_never_serve_below_a_returned_save_while_redis_is_up(
    cluster: Cluster,
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(RUN_SECONDS, stop.set)
    before = await stats(cluster.gateways[1].target)

    ledger = await run_workload(cluster, stop, every_save_binds=False)
    after = await stats(cluster.gateways[1].target)

    a_errors = (await stats(cluster.gateways[0].target)).errors
    assert ledger.violations == [], (ledger.violations[:5], after.errors, a_errors)
    assert ledger.read_errors == 0
    writes = sum(len(v) for v in ledger.returned.values())
    assert writes > WRITERS and ledger.reads > READERS * 10
    # The replica the store never calls answered from memory too: the check is not vacuous.
    assert after.in_process.hits > before.in_process.hits


async def test_stale_reads_stay_within_the_bound_while_redis_is_down_and_stop_after_recovery(
    cluster: Cluster,
) -> None:
    stop = asyncio.Event()
    recovered_at: list[float] = []

    async def outage() -> None:
        await asyncio.sleep(RUN_SECONDS * 0.25)
        await asyncio.to_thread(cluster.redis.stop)
        await asyncio.sleep(RUN_SECONDS * 0.3)
        await asyncio.to_thread(cluster.redis.start)
        for gateway in cluster.gateways:
            await until(lambda g=gateway: redis_serving(g))  # type: ignore[misc]
        recovered_at.append(time.monotonic())

    asyncio.get_running_loop().call_later(RUN_SECONDS, stop.set)
    chaos = asyncio.create_task(outage())
    ledger = await run_workload(cluster, stop, every_save_binds=True)
    await chaos

    assert recovered_at, "Redis never came back"
    assert ledger.read_errors == 0
    staleness = [v[1] for v in ledger.violations]
    assert max(staleness, default=0.0) <= cluster.bound + SLACK_SECONDS, staleness
    assert [v for v in ledger.violations if v[0] > recovered_at[0]] == []
    assert ledger.reads > READERS * 10
