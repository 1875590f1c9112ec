"""Benchmark of the profile store over gRPC: GetStyleProfile latency and bulk-import throughput.

Starts its own embedded PostgreSQL (durable=False: fsync and synchronous_commit off, so
commits cost less than on a durable server) and one profile_store process on free ports,
then prints its figures. The cache gateway is not started: the store's invalidation calls
fail fast and the outbox relay keeps the rows, as in a deployment whose gateway is down.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from shared.db import migrate
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_asyncpg_url
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_env

BATCH = 1000


def _profile(name: str, rng: random.Random) -> common_pb2.StyleProfile:
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    tempo = rng.uniform(70, 170)
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description=f"{name}: a synthetic drummer for the benchmark.",
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=tempo - 10,
            tempo_max=tempo + 10,
            tempo_avg=tempo,
            swing_percent=rng.uniform(50, 66),
            ghost_note_prob=rng.random(),
            syncopation_level=rng.random(),
            velocity_mean=rng.uniform(60, 110),
            velocity_std=rng.uniform(5, 20),
        ),
        midi_templates=[f"templates/bench/{name}.mid"],
        embedding=[v / norm for v in values],
        confidence_score=rng.random(),
        sources_count=common_pb2.SourceCounts(papers=1, articles=2, audio=3, midi=1),
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def bulk_import(
    stub: pb_grpc.ProfileStoreServiceAsyncStub, total: int, in_flight: int
) -> tuple[float, float]:
    """(profiles per second, median seconds per 1,000-profile batch)."""
    rng = random.Random(7)
    batches = [
        pb.BatchSaveStyleProfilesRequest(
            profiles=[
                _profile(f"Bench Artist {i:06d}", rng) for i in range(s, min(s + BATCH, total))
            ]
        )
        for s in range(0, total, BATCH)
    ]
    queue = list(reversed(batches))
    durations: list[float] = []

    async def worker() -> None:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            await stub.BatchSaveStyleProfiles(request, timeout=600)
            durations.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return total / elapsed, statistics.median(durations)


async def latency(
    call: Callable[[int], Awaitable[object]], requests: int, in_flight: int
) -> tuple[list[float], float]:
    """Sorted per-call latencies in seconds and calls per second."""
    samples: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return sorted(samples), requests / elapsed


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def run(target: str, profiles: int, requests: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ProfileStoreServiceStub(channel)
        rate, per_batch = await bulk_import(stub, profiles, in_flight=1)
        print(
            f"BatchSaveStyleProfiles bulk import, {profiles} profiles with embeddings in batches"
            f" of {BATCH}, 1 in flight: {rate:,.0f} profiles/s (median batch {_ms(per_batch)})"
        )
        rate2, per_batch2 = await bulk_import(stub, profiles, in_flight=2)
        print(
            f"BatchSaveStyleProfiles re-import (updates), 2 in flight: {rate2:,.0f} profiles/s"
            f" (median batch {_ms(per_batch2)})"
        )
        rng = random.Random(11)

        async def get(_: int) -> object:
            name = f"Bench Artist {rng.randrange(profiles):06d}"
            return await stub.GetStyleProfile(
                pb.GetStyleProfileRequest(artist_name=name), timeout=10
            )

        await latency(get, 200, 4)  # warm the pool and the prepared statements
        for in_flight in (1, 32):
            samples, throughput = await latency(get, requests, in_flight)
            print(
                f"GetStyleProfile from PostgreSQL, {in_flight:>2} in flight, {requests} calls:"
                f" p50 {_ms(_percentile(samples, 0.50))}, p95 {_ms(_percentile(samples, 0.95))},"
                f" p99 {_ms(_percentile(samples, 0.99))}, {throughput:,.0f} calls/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument(
        "--vector-index",
        choices=("hnsw", "ivfflat"),
        default="hnsw",
        help="index the migrations build on the embedding (its upkeep dominates bulk import)",
    )
    args = parser.parse_args()
    os.environ["DB_VECTOR_INDEX"] = args.vector_index
    with tempfile.TemporaryDirectory(prefix="stylebase-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg", durable=False)
        url = to_asyncpg_url(postgres.start())
        store: ServiceProcess | None = None
        try:
            migrate.upgrade(url)
            env = service_env(
                url,
                {
                    "CACHE_GATEWAY_TARGET": f"127.0.0.1:{free_port()}",
                    # A busy machine can take longer than the default 30 s for one batch.
                    "DB_STATEMENT_TIMEOUT_MS": "600000",
                },
            )
            store = ServiceProcess("profile_store", env).start()
            print(
                f"profile_store at {store.target}; PostgreSQL durable=False;"
                f" {args.vector_index} index on the embedding; gateway not running"
            )
            asyncio.run(run(store.target, args.profiles, args.requests))
        finally:
            if store is not None:
                store.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
