"""Benchmark of the cache gateway against the bare gRPC floor, and Redis memory for 10k profiles.

Starts its own embedded PostgreSQL, redis-server, one profile_store process, two gateway
processes (one as deployed; one whose in-process tier holds a single entry, so reads fall
through to Redis) and a bare grpc.aio server that returns a pre-built response of the same
size (the floor), all on free ports; prints the figures and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis.asyncio as redis

from bench.figures import Chart, percentile
from shared.db import migrate
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import to_asyncpg_url
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from tests.harness import ServiceProcess, service_env

METHOD = "/stylebase.cache_gateway.v1.CacheGatewayService/GetStyleProfile"
REDIS_ARTISTS = 200
MEMORY_PROFILES = 10_000


def make_profile(name: str, rng: random.Random) -> common_pb2.StyleProfile:
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description=f"{name} plays behind the beat with loose hi-hats and ghost notes. " * 4,
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=85,
            tempo_max=98,
            tempo_avg=92,
            swing_percent=58,
            ghost_note_prob=0.3,
            syncopation_level=0.6,
            velocity_mean=88,
            velocity_std=14,
        ),
        midi_templates=[f"templates/bench/{name}.mid"],
        embedding=[v / norm for v in values],
        confidence_score=0.8,
        sources_count=common_pb2.SourceCounts(papers=1, articles=2, audio=3, midi=1),
    )


def start_floor(port: int, response: bytes, work: Path) -> subprocess.Popen[bytes]:
    path = work / "floor.bin"
    path.write_bytes(response)
    command = [sys.executable, "-m", "bench.cache_gateway", "--floor", str(port)]
    return subprocess.Popen([*command, "--response", str(path)])


async def serve_floor(port: int, response: bytes) -> None:
    """The floor: a bare grpc.aio server answering a pre-built response (a real one's bytes)."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return response

    server = grpc.aio.server()
    generic = grpc.method_handlers_generic_handler(
        "stylebase.cache_gateway.v1.CacheGatewayService",
        {"GetStyleProfile": grpc.unary_unary_rpc_method_handler(handler)},
    )
    server.add_generic_rpc_handlers((generic,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def measure(
    target: str, names: list[str], in_flight: int, seconds: float
) -> tuple[list[float], float, set[pb.ServedFrom.ValueType]]:
    """Latencies (s), throughput (req/s) and the tiers that answered."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CacheGatewayServiceStub(channel)
        # Warm-up: every artist once, so the runs measure hits only.
        for name in names:
            request = pb.GetStyleProfileRequest(artist_name=name)
            await stub.GetStyleProfile(request, timeout=30, wait_for_ready=True)
        latencies: list[float] = []
        tiers: set[pb.ServedFrom.ValueType] = set()
        stop_at = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            n = i
            while time.perf_counter() < stop_at:
                n += in_flight
                request = pb.GetStyleProfileRequest(artist_name=names[n % len(names)])
                started = time.perf_counter()
                reply = await stub.GetStyleProfile(request, timeout=10)
                latencies.append(time.perf_counter() - started)
                tiers.add(reply.served_from)

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return latencies, len(latencies) / elapsed, tiers


def report(
    label: str,
    result: tuple[list[float], float, set[pb.ServedFrom.ValueType]],
    floor: tuple[float, float],
    chart: Chart,
) -> None:
    latencies, throughput, tiers = result
    p50 = percentile(latencies, 0.5)
    series, group = label.split(", ")
    chart.latency(
        group,
        series,
        p50_ms=p50 * 1e3,
        p95_ms=percentile(latencies, 0.95) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        per_second=throughput,
        ratio=p50 / floor[0],
    )
    names = ",".join(pb.ServedFrom.Name(t).removeprefix("SERVED_FROM_") for t in sorted(tiers))
    print(
        f"{label:<28} p50 {p50 * 1e3:6.3f} ms  p95 {percentile(latencies, 0.95) * 1e3:6.3f} ms  "
        f"p99 {percentile(latencies, 0.99) * 1e3:6.3f} ms  {throughput:8.0f} req/s  "
        f"p50 x{p50 / floor[0]:.2f}  throughput x{throughput / floor[1]:.2f} of floor  [{names}]"
    )


async def fill_store(target: str, names: list[str]) -> None:
    rng = random.Random(7)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = store_grpc.ProfileStoreServiceStub(channel)
        for start in range(0, len(names), 1000):
            batch = [make_profile(n, rng) for n in names[start : start + 1000]]
            request = store_pb.BatchSaveStyleProfilesRequest(profiles=batch)
            await stub.BatchSaveStyleProfiles(request, timeout=120)


def bench(seconds: float) -> None:
    """Start everything synchronously (migrations run their own loop), then measure."""
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = Path(tmp)
        postgres = EmbeddedPostgres(work / "pg", durable=False)
        cache = RedisServer(work / "redis")
        memory_redis = RedisServer(work / "redis-memory")
        processes: list[ServiceProcess] = []
        floor_port = free_port()
        floors: list[subprocess.Popen[bytes]] = []
        try:
            postgres.start()
            cache.start()
            memory_redis.start()
            url = to_asyncpg_url(postgres.url)
            migrate.upgrade(url)
            gw_port = free_port()
            # The store invalidates through the Redis the serving gateways use.
            store = ServiceProcess("profile_store", service_env(url, {"REDIS_URL": cache.url}))
            common = {"PROFILE_STORE_TARGET": store.target, "LOG_LEVEL": "WARNING"}
            gateway = ServiceProcess(
                "cache_gateway", service_env(url, {**common, "REDIS_URL": cache.url}), port=gw_port
            )
            redis_only = ServiceProcess(
                "cache_gateway",
                service_env(
                    url, {**common, "REDIS_URL": cache.url, "CACHE_MEMORY_MAX_ENTRIES": "1"}
                ),
            )
            sizer = ServiceProcess(
                "cache_gateway", service_env(url, {**common, "REDIS_URL": memory_redis.url})
            )
            processes = [store, gateway, redis_only, sizer]
            for process in processes:
                process.start()
            names = [f"Bench Artist {i:05d}" for i in range(MEMORY_PROFILES)]
            asyncio.run(fill_store(store.target, names))
            sample = asyncio.run(first_response(gateway.target, names[0]))
            floors.append(start_floor(floor_port, sample, work))
            print(f"response size {len(sample)} bytes; {seconds:.0f} s per run")
            floor_target = f"127.0.0.1:{floor_port}"
            asyncio.run(
                measure_all(floor_target, gateway.target, redis_only.target, names, seconds)
            )
            asyncio.run(redis_memory(sizer.target, memory_redis.url, names))
        finally:
            for floor in floors:
                floor.terminate()
                floor.wait()
            for process in reversed(processes):
                process.stop()
            memory_redis.stop()
            cache.stop()
            postgres.stop()


async def measure_all(
    floor_target: str, gateway: str, redis_only: str, names: list[str], seconds: float
) -> None:
    hot, spread = names[:1], names[:REDIS_ARTISTS]
    chart = Chart(
        "cache_gateway", "GetStyleProfile through the cache gateway", ratio_title="p50 / floor"
    )
    for in_flight in (1, 64):
        floor = await measure(floor_target, hot, in_flight, seconds)
        figures = (percentile(floor[0], 0.5), floor[1])
        report(f"floor, {in_flight} in flight", floor, figures, chart)
        memory = await measure(gateway, hot, in_flight, seconds)
        report(f"in-process hit, {in_flight} in flight", memory, figures, chart)
        redis_tier = await measure(redis_only, spread, in_flight, seconds)
        report(f"Redis hit, {in_flight} in flight", redis_tier, figures, chart)
    print(f"chart: {chart.write()}")


async def first_response(target: str, name: str) -> bytes:
    """The bytes of a real in-process hit, for the floor to send."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CacheGatewayServiceStub(channel)
        request = pb.GetStyleProfileRequest(artist_name=name)
        await stub.GetStyleProfile(request, timeout=30)
        reply = await stub.GetStyleProfile(request, timeout=30)
    return reply.SerializeToString()


async def redis_memory(target: str, url: str, names: list[str]) -> None:
    client = redis.Redis.from_url(url)
    try:
        before = int((await client.info("memory"))["used_memory"])
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.CacheGatewayServiceStub(channel)
            reply = await stub.WarmCache(pb.WarmCacheRequest(artist_names=names), timeout=600)
        info = await client.info("memory")
        keys = await client.dbsize()
        values = 0
        async for key in client.scan_iter(match="*:e:*", count=1000):
            values += int(await client.memory_usage(key) or 0)
    finally:
        await client.aclose()
    used = int(info["used_memory"])
    print(
        f"Redis memory: {reply.warmed} profiles warmed ({values / 2**20:.1f} MiB of entries, "
        f"{keys} keys): used_memory {used / 2**20:.1f} MiB "
        f"({(used - before) / 2**20:.1f} MiB over the empty server, "
        f"{(used - before) / max(1, reply.warmed):.0f} bytes a profile); "
        f"used_memory_rss {int(info['used_memory_rss']) / 2**20:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--response", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        asyncio.run(serve_floor(args.floor, args.response.read_bytes()))
    else:
        bench(args.seconds)


if __name__ == "__main__":
    main()
