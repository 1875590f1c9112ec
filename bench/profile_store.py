"""Benchmark of the profile store over gRPC: GetStyleProfile latency and bulk-import throughput.

Starts its own embedded PostgreSQL (durable=False: fsync and synchronous_commit off, so
commits cost less than on a durable server) and one profile_store process on free ports,
then prints its figures. The cache gateway is not started: the store's invalidation calls
fail fast and the outbox relay keeps the rows, as in a deployment whose gateway is down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import numpy as np

from bench.figures import Chart, percentile
from bench.similarity.data import clustered_unit_vectors
from shared.db import migrate
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_asyncpg_url, to_libpq_url
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_env

BATCH = 1000
# The migrations' own index definitions (shared/migrations/versions/a86af6571aac_...).
INDEX_DDL = {
    "hnsw": "CREATE INDEX ON ceiling USING hnsw (embedding vector_cosine_ops)"
    " WITH (m = 16, ef_construction = 64)",
    "ivfflat": "CREATE INDEX ON ceiling USING ivfflat (embedding vector_cosine_ops)"
    " WITH (lists = 100)",
}


def _vectors(total: int, kind: str) -> np.ndarray:
    """Unit embeddings: clustered like real sentence embeddings, or uniform on the sphere
    (the worst case for an HNSW graph: no neighbourhoods to follow)."""
    if kind == "clustered":
        return clustered_unit_vectors(total, seed=7)
    points = np.random.default_rng(7).normal(size=(total, 384)).astype(np.float32)
    unit: np.ndarray = points / np.linalg.norm(points, axis=1, keepdims=True)
    return unit


def _profile(name: str, rng: random.Random, vector: np.ndarray) -> common_pb2.StyleProfile:
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
        embedding=vector.tolist(),
        confidence_score=rng.random(),
        sources_count=common_pb2.SourceCounts(papers=1, articles=2, audio=3, midi=1),
    )


async def bulk_import(
    stub: pb_grpc.ProfileStoreServiceAsyncStub,
    vectors: np.ndarray,
    in_flight: int,
    *,
    first: int = 0,
) -> tuple[float, float]:
    """(profiles per second, median seconds per 1,000-profile batch); artists are numbered
    from first, so another range imports new artists and the same range updates them."""
    rng = random.Random(7)
    total = len(vectors)
    batches = [
        pb.BatchSaveStyleProfilesRequest(
            profiles=[
                _profile(f"Bench Artist {first + i:06d}", rng, vectors[i])
                for i in range(s, min(s + BATCH, total))
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


async def sql_ceiling(dsn: str, vectors: np.ndarray, index_ddl: str) -> float:
    """Rows per second of PostgreSQL alone inserting the same vectors, 1,000 a statement,
    into a bare table with the same index: the ceiling for any service in front of it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE ceiling (id serial PRIMARY KEY, embedding vector(384))")
        await conn.execute(index_ddl)
        literals = ["[" + ",".join(map(str, row.tolist())) + "]" for row in vectors]
        started = time.perf_counter()
        for s in range(0, len(literals), BATCH):
            await conn.execute(
                "INSERT INTO ceiling (embedding) SELECT unnest($1::text[])::vector",
                literals[s : s + BATCH],
            )
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE ceiling")
        return len(literals) / elapsed
    finally:
        await conn.close()


async def run(target: str, vectors: np.ndarray, requests: int) -> None:
    profiles = len(vectors)
    chart = Chart("profile_store", f"profile store, {profiles:,} profiles")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ProfileStoreServiceStub(channel)
        half = profiles // 2
        for label, part, first, in_flight in (
            ("import of new artists", vectors[:half], 0, 1),
            ("import of new artists", vectors[half:], half, 2),
            # Unchanged embeddings leave the index alone (heap-only tuple updates).
            ("re-import of the same profiles (updates)", vectors[:half], 0, 2),
        ):
            rate, per_batch = await bulk_import(stub, part, in_flight, first=first)
            kind = "updates" if "re-import" in label else "new artists"
            chart.rate(f"{in_flight} in flight", f"batch save, {kind}", rate)
            print(
                f"BatchSaveStyleProfiles {label}, {len(part)} profiles in batches of {BATCH},"
                f" {in_flight} in flight: {rate:,.0f} profiles/s (median batch {_ms(per_batch)})"
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
            chart.latency(
                f"{in_flight} in flight",
                "GetStyleProfile",
                p50_ms=percentile(samples, 0.50) * 1e3,
                p95_ms=percentile(samples, 0.95) * 1e3,
                p99_ms=percentile(samples, 0.99) * 1e3,
            )
            chart.rate(f"{in_flight} in flight", "GetStyleProfile", throughput)
            print(
                f"GetStyleProfile from PostgreSQL, {in_flight:>2} in flight, {requests} calls:"
                f" p50 {_ms(percentile(samples, 0.50))}, p95 {_ms(percentile(samples, 0.95))},"
                f" p99 {_ms(percentile(samples, 0.99))}, {throughput:,.0f} calls/s"
            )
    print(f"chart: {chart.write()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument(
        "--vectors",
        choices=("clustered", "uniform"),
        default="clustered",
        help="embeddings as real ones are (clustered) or uniform on the sphere (worst case)",
    )
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
            vectors = _vectors(args.profiles, args.vectors)
            ddl = INDEX_DDL[args.vector_index]
            ceiling = asyncio.run(sql_ceiling(to_libpq_url(url), vectors, ddl))
            print(
                f"PostgreSQL alone, the same {args.profiles} {args.vectors} vectors into a bare"
                f" table with the same {args.vector_index} index: {ceiling:,.0f} rows/s"
            )
            store = ServiceProcess("profile_store", env).start()
            print(
                f"profile_store at {store.target}; PostgreSQL durable=False;"
                f" {args.vector_index} index on the embedding; {args.vectors} vectors;"
                " gateway not running"
            )
            asyncio.run(run(store.target, vectors, args.requests))
        finally:
            if store is not None:
                store.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
