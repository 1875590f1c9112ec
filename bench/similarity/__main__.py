"""python -m bench.similarity [--sizes 10000,100000] [--loader grpc|copy]: prints the figures."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

from bench.figures import Chart
from bench.similarity.data import clustered_unit_vectors, load_through_store, load_with_copy
from bench.similarity.measure import grpc_latencies, grpc_recall, numpy_exact
from shared.db import migrate
from shared.embedded.postgres import DATABASE, EmbeddedPostgres
from tests.harness import ServiceProcess, service_env

READONLY_ROLE = "stylebase_readonly"
INDEX_DDL = (
    "CREATE INDEX ix_style_profiles_embedding ON style_profiles "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)
SIZES_SQL = (
    "SELECT pg_size_pretty(pg_table_size('style_profiles')),"
    " pg_size_pretty(pg_relation_size('ix_style_profiles_embedding')),"
    " pg_size_pretty(pg_total_relation_size('style_profiles'))"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.similarity", description=__doc__)
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="comma-separated artist counts (default: %(default)s)",
    )
    parser.add_argument(
        "--loader",
        choices=["grpc", "copy"],
        default="grpc",
        help="grpc: the store's BatchSaveStyleProfiles (default); copy: COPY into the tables",
    )
    parser.add_argument("--queries", type=int, default=2000, help="timed requests per level")
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--ef-search", type=int, default=0, help="0: the service default")
    return parser.parse_args(argv)


async def build_index(dsn: str) -> None:
    """Over asyncpg rather than psql: the 100k build outlasts psql's 60 s limit here."""
    connection = await asyncpg.connect(dsn)
    try:
        # Memory enough to build the whole graph in memory; one helper for 2 cores.
        await connection.execute("SET maintenance_work_mem = '1GB'")
        await connection.execute("SET max_parallel_maintenance_workers = 1")
        await connection.execute(INDEX_DDL)
    finally:
        await connection.close()


def timed(label: str, started: float) -> float:
    elapsed = time.perf_counter() - started
    print(f"  {label}: {elapsed:.1f} s", flush=True)
    return elapsed


def run_size(n: int, args: argparse.Namespace, workdir: Path, chart: Chart) -> None:
    print(f"\n== {n:,} artists (loader: {args.loader}) ==", flush=True)
    postgres = EmbeddedPostgres(workdir / f"pg-{n}", durable=False)
    postgres.start()
    processes: list[ServiceProcess] = []
    try:
        # Enough shared memory to hold table and index, as a production server would.
        postgres.psql("ALTER SYSTEM SET shared_buffers = '1GB'")
        postgres.stop()
        postgres.start()
        migrate.upgrade(postgres.url)
        # An initial bulk load builds the HNSW graph once after the rows are in: far
        # cheaper than growing it insert by insert, and the same index definition.
        postgres.psql("DROP INDEX ix_style_profiles_embedding", DATABASE)
        env = service_env(postgres.url, {"LOG_LEVEL": "WARNING"})
        vectors = clustered_unit_vectors(n)

        started = time.perf_counter()
        if args.loader == "grpc":
            store = ServiceProcess("profile_store", env).start()
            processes.append(store)
            asyncio.run(load_through_store(store.target, vectors))
        else:
            asyncio.run(load_with_copy(postgres.url, vectors))
        timed("load", started)
        postgres.psql("VACUUM (ANALYZE) artists, style_profiles", DATABASE)
        started = time.perf_counter()
        asyncio.run(build_index(postgres.url))
        timed("index build (HNSW m=16 ef_construction=64)", started)
        table, index, total = postgres.psql(SIZES_SQL, DATABASE).strip().split("|")
        print(f"  sizes: table {table}, index {index}, total with indexes {total}")

        # The service reads through the read-only role the migrations create.
        readonly = postgres.url.replace("postgres@", f"{READONLY_ROLE}@", 1)
        similarity = ServiceProcess(
            "similarity", {**env, "POSTGRES_READONLY_DATABASE_URL": readonly}
        ).start()
        processes.append(similarity)
        rng = np.random.default_rng(7)
        queries = rng.choice(n, args.queries, replace=args.queries > n)
        print(f"FindSimilarArtists over gRPC, limit 10, {args.queries} requests per level:")
        for in_flight in (1, 16):
            result = asyncio.run(
                grpc_latencies(
                    similarity.target, queries, in_flight=in_flight, ef_search=args.ef_search
                )
            )
            print(result.line(), flush=True)
            chart.latency(
                f"{in_flight} in flight",
                f"{n:,} artists",
                p50_ms=result.p50_ms,
                p95_ms=result.p95_ms,
                p99_ms=result.p99_ms,
                per_second=result.per_second,
            )
        recall_queries = rng.choice(n, min(args.recall_queries, n), replace=False)
        recall = asyncio.run(
            grpc_recall(similarity.target, vectors, recall_queries, ef_search=args.ef_search)
        )
        print(f"  recall@10 against exact: {recall:.4f} ({len(recall_queries)} queries)")
        reference = numpy_exact(vectors, queries)
        chart.latency(
            "1 in flight",
            f"{n:,} numpy exact",
            p50_ms=reference.p50_ms,
            p95_ms=reference.p95_ms,
            p99_ms=reference.p99_ms,
            per_second=reference.per_second,
        )
        chart.ratio("recall@10", f"{n:,} artists", recall)
        print(
            f"numpy exact top-10 in process (float32 matrix-vector product): "
            f"p50 {reference.p50_ms:.2f} ms  p95 {reference.p95_ms:.2f} ms  "
            f"{reference.per_second:.0f} queries/s",
            flush=True,
        )
    finally:
        for process in reversed(processes):
            process.stop()
        postgres.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        print(f"--sizes: expected comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    chart = Chart("similarity", "FindSimilarArtists over gRPC", ratio_title="recall@10")
    with tempfile.TemporaryDirectory(prefix="bench-similarity-") as tmp:
        for n in sizes:
            run_size(n, args, Path(tmp), chart)
    print(f"chart: {chart.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
