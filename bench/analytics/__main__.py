"""python -m bench.analytics [--sizes 1M,10M]: bulk-loads history, prints the figures."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc

from bench.analytics.load import load, prepare_server
from bench.analytics.measure import history_call, latencies, percentiles, record_rate, stats_call
from bench.figures import Chart
from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_libpq_url
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_env


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__)
    parser.add_argument(
        "--sizes", default="1M,10M", help="history rows per run (default: %(default)s)"
    )
    parser.add_argument("--artists", type=int, default=2000, help="artists the rows spread over")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per read figure")
    parser.add_argument("--record-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=64, help="RecordGeneration in flight")
    parser.add_argument("--batch", type=int, default=500, help="records per BatchRecordGenerations")
    return parser.parse_args(argv)


def run_size(rows: int, args: argparse.Namespace, postgres: EmbeddedPostgres, chart: Chart) -> None:
    print(f"\n== {rows:,} generation rows, {args.artists:,} artists ==", flush=True)
    url = postgres.url
    started = time.perf_counter()

    async def bulk() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            return await load(conn, rows, args.artists)
        finally:
            await conn.close()

    names = asyncio.run(bulk())
    print(f"  bulk load with rollups: {time.perf_counter() - started:.1f} s", flush=True)
    readonly = url.replace("postgres@", "stylebase_readonly@", 1)
    service = ServiceProcess(
        "analytics",
        service_env(url, {"POSTGRES_READONLY_DATABASE_URL": readonly, "DB_POOL_SIZE": "20"}),
    ).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            total = pb_grpc.AnalyticsServiceStub(channel).GetStats(pb.GetStatsRequest(), timeout=30)
        assert total.total_generations == rows, (total.total_generations, rows)
        figures = [
            ("GetStats, whole history", stats_call(None)),
            ("GetStats, 30-day window, unaligned edges", stats_call(30)),
            ("GetStats, 300-day window, unaligned edges", stats_call(300)),
            ("GetArtistHistory, first page of 10", history_call(names)),
            ("GetArtistHistory, pages 1 and 2 (2 calls)", history_call(names, deep=True)),
        ]
        for label, call in figures:
            samples = latencies(service.target, args.calls, call)
            print(f"  {label:<44} {percentiles(samples)}", flush=True)
            cuts = statistics.quantiles(samples, n=100, method="inclusive")
            chart.latency(
                label,
                f"{rows:,} rows",
                p50_ms=cuts[49],
                p95_ms=cuts[94],
                p99_ms=cuts[98],
            )
        done, elapsed, failed = asyncio.run(
            record_rate(service.target, names, args.record_seconds, args.concurrency)
        )
        chart.rate(f"RecordGeneration x{args.concurrency}", f"{rows:,} rows", done / elapsed)
        print(
            f"  RecordGeneration, {args.concurrency} in flight: {done / elapsed:,.0f} records/s"
            f" ({done:,} in {elapsed:.1f} s, {failed} failed)",
            flush=True,
        )
        done, elapsed, failed = asyncio.run(
            record_rate(service.target, names, args.record_seconds, 2, batch=args.batch)
        )
        chart.rate(f"Batch of {args.batch} x2", f"{rows:,} rows", done / elapsed)
        print(
            f"  BatchRecordGenerations, {args.batch} per call, 2 in flight:"
            f" {done / elapsed:,.0f} records/s ({done:,} in {elapsed:.1f} s, {failed} failed)",
            flush=True,
        )
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="stylebase-bench-analytics-"))
    postgres = EmbeddedPostgres(workdir / "pg", durable=False)
    try:
        postgres.start()

        async def tune() -> None:
            conn = await asyncpg.connect(to_libpq_url(postgres.url))
            try:
                await prepare_server(conn)
            finally:
                await conn.close()

        asyncio.run(tune())
        postgres.stop()
        postgres.start()
        migrate.upgrade(postgres.url)
        print("analytics benchmark (embedded PostgreSQL, fsync off; service as its own process)")
        chart = Chart("analytics", "analytics service, 1 call in flight")
        for rows in sizes:
            run_size(rows, args, postgres, chart)
        print(f"chart: {chart.write()}")
    finally:
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
