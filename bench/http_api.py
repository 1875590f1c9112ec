"""The HTTP API against the gRPC call it wraps: GET /api/v1/similar/{artist} next to
FindSimilarArtists on the same data, the same queries, in the same run.

HTTP is measured with two clients: aiohttp (lean) and httpx (whose own cost per request is
about a millisecond; its /healthz floor shows it). Starts its own embedded PostgreSQL with
10,000 synthetic artists (an HNSW index, as migrated), the four services and http_api on
free ports; prints p50/p95/p99 and throughput at 1 and 16 requests in flight, and HTTP's
ratio to gRPC; stops everything.

    python -m bench.http_api [--artists 10000] [--queries 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import httpx
import numpy as np

from bench.figures import Chart
from bench.similarity.__main__ import build_index
from bench.similarity.data import clustered_unit_vectors, load_with_copy, name_of
from bench.similarity.measure import K, Latencies, grpc_latencies, timed_calls
from shared.db import migrate
from shared.embedded.postgres import DATABASE, EmbeddedPostgres
from tests.harness import ServiceProcess, service_env
from tests.http_api.support import GRPC_SERVICES, ApiProcess, targets

Get = Callable[[str], Awaitable[int]]


def similar_path(i: int) -> str:
    return f"/api/v1/similar/{quote(name_of(i), safe='')}?limit={K}"


async def _measure(
    get: Get, queries: np.ndarray, in_flight: int, path_of: Callable[[int], str]
) -> Latencies:
    async def call(i: int) -> None:
        path = path_of(i)
        status = await get(path)
        if status != 200:
            raise RuntimeError(f"{path}: {status}")

    return await timed_calls(call, queries, in_flight)


async def aiohttp_latencies(
    base_url: str, queries: np.ndarray, *, in_flight: int, path_of: Callable[[int], str]
) -> Latencies:
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def get(path: str) -> int:
            async with session.get(path) as reply:
                await reply.read()
                return reply.status

        return await _measure(get, queries, in_flight, path_of)


async def httpx_latencies(
    base_url: str, queries: np.ndarray, *, in_flight: int, path_of: Callable[[int], str]
) -> Latencies:
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def get(path: str) -> int:
            return (await client.get(path)).status_code

        return await _measure(get, queries, in_flight, path_of)


CLIENTS = {"aiohttp": aiohttp_latencies, "httpx": httpx_latencies}


def median(results: list[Latencies]) -> Latencies:
    return Latencies(
        results[0].in_flight,
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p95_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.per_second for r in results),
    )


def _record(chart: Chart, series: str, result: Latencies, grpc_result: Latencies) -> None:
    chart.latency(
        f"{result.in_flight} in flight",
        series,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        per_second=result.per_second,
        ratio=result.p50_ms / grpc_result.p50_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_api", description=__doc__)
    parser.add_argument("--artists", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=2000, help="timed requests per level")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stylebase-bench-http-") as workdir:
        postgres = EmbeddedPostgres(Path(workdir) / "pg", durable=False)
        postgres.start()
        processes: list[ServiceProcess | ApiProcess] = []
        try:
            migrate.upgrade(postgres.url)
            postgres.psql("DROP INDEX ix_style_profiles_embedding", DATABASE)
            vectors = clustered_unit_vectors(args.artists)
            asyncio.run(load_with_copy(postgres.url, vectors))
            postgres.psql("VACUUM (ANALYZE) artists, style_profiles", DATABASE)
            asyncio.run(build_index(postgres.url))
            env = service_env(postgres.url, {"LOG_LEVEL": "WARNING"})
            services: dict[str, ServiceProcess] = {}
            for name in GRPC_SERVICES:
                services[name] = ServiceProcess(name, {**env, **targets(services)}).start()
                processes.append(services[name])
            api = ApiProcess(env={**env, **targets(services)}).start()
            processes.append(api)
            similarity = services["similarity"].target
            queries = np.random.default_rng(7).choice(args.artists, args.queries)
            print(
                f"GET /api/v1/similar/{{artist}}?limit={K} against FindSimilarArtists "
                f"(grpc.aio), {args.artists:,} artists, {args.queries} requests per level, "
                f"medians of {args.rounds} alternating rounds; HTTP over keep-alive "
                "connections with two clients:",
                flush=True,
            )
            for client, measure in CLIENTS.items():
                healthz = asyncio.run(
                    measure(api.base_url, queries[:500], in_flight=1, path_of=lambda _: "/healthz")
                )
                print(
                    f"  {client} floor, GET /healthz (no gRPC behind): p50 {healthz.p50_ms:.2f} ms"
                )
            chart = Chart("http_api", "GET /api/v1/similar against gRPC", ratio_title="p50 / gRPC")
            for in_flight in (1, 16):
                runs: dict[str, list[Latencies]] = {"grpc": [], **{c: [] for c in CLIENTS}}
                for _ in range(args.rounds):
                    runs["grpc"].append(
                        asyncio.run(grpc_latencies(similarity, queries, in_flight=in_flight))
                    )
                    for client, measure in CLIENTS.items():
                        runs[client].append(
                            asyncio.run(
                                measure(
                                    api.base_url, queries, in_flight=in_flight, path_of=similar_path
                                )
                            )
                        )
                grpc_result = median(runs["grpc"])
                print(f"  gRPC         {grpc_result.line().strip()}")
                _record(chart, "gRPC", grpc_result, grpc_result)
                for client in CLIENTS:
                    result = median(runs[client])
                    _record(chart, f"HTTP {client}", result, grpc_result)
                    print(f"  HTTP {client:<7} {result.line().strip()}")
                    print(
                        f"    HTTP ({client})/gRPC at {in_flight} in flight: p50 "
                        f"{result.p50_ms / grpc_result.p50_ms:.2f}x, p99 "
                        f"{result.p99_ms / grpc_result.p99_ms:.2f}x, throughput "
                        f"{result.per_second / grpc_result.per_second:.2f}x",
                        flush=True,
                    )
            print(f"chart: {chart.write()}")
        finally:
            for process in reversed(processes):
                process.stop()
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
