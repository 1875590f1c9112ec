"""Timed gRPC calls against a running analytics service: latency percentiles and rates."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc


def percentiles(samples_ms: list[float]) -> str:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return f"p50 {cuts[49]:7.2f} ms   p95 {cuts[94]:7.2f} ms   p99 {cuts[98]:7.2f} ms"


def latencies(
    target: str, calls: int, make: Callable[[pb_grpc.AnalyticsServiceStub], Any]
) -> list[float]:
    """Sequential calls on one channel, after a warm-up, in milliseconds."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        for _ in range(min(20, calls)):
            make(stub)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            make(stub)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def stats_call(window_days: int | None) -> Callable[[pb_grpc.AnalyticsServiceStub], Any]:
    rng = random.Random(1)

    def call(stub: pb_grpc.AnalyticsServiceStub) -> Any:
        request = pb.GetStatsRequest()
        if window_days is not None:
            # Unaligned edges, so partial minutes are read from the raw rows.
            until = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 90 * 86_400))
            request.since.FromDatetime(
                until - timedelta(days=window_days, seconds=rng.uniform(0, 3600))
            )
            request.until.FromDatetime(until)
        return stub.GetStats(request, timeout=30)

    return call


def history_call(
    names: list[str], *, deep: bool = False
) -> Callable[[pb_grpc.AnalyticsServiceStub], Any]:
    rng = random.Random(2)

    def call(stub: pb_grpc.AnalyticsServiceStub) -> Any:
        name = rng.choice(names)
        page = stub.GetArtistHistory(
            pb.GetArtistHistoryRequest(artist_name=name, limit=10), timeout=30
        )
        if deep and page.next_page_token:
            page = stub.GetArtistHistory(
                pb.GetArtistHistoryRequest(
                    artist_name=name, limit=10, page_token=page.next_page_token
                ),
                timeout=30,
            )
        return page

    return call


def _record(rng: random.Random, names: list[str]) -> pb.RecordGenerationRequest:
    return pb.RecordGenerationRequest(
        artist_name=rng.choice(names),
        provider_used=rng.choice(["anthropic", "google", "openai", "template"]),
        generation_time_ms=rng.randrange(200, 9000),
        tokens_used=rng.randrange(0, 4000),
        cost_usd=rng.uniform(0, 0.05),
        user_params=pb.UserParams(bars=8, tempo=120, time_signature="4/4", variations=2),
        output_files=["out/pattern.mid"],
    )


async def record_rate(
    target: str, names: list[str], seconds: float, concurrency: int, *, batch: int = 0
) -> tuple[int, float, int]:
    """(records, elapsed seconds, failures) with `concurrency` calls always in flight:
    RecordGeneration calls, or BatchRecordGenerations calls of `batch` records."""
    rng = random.Random(3)
    done = failed = 0
    stop_at = time.perf_counter() + seconds

    async def worker(stub: pb_grpc.AnalyticsServiceAsyncStub) -> None:
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            try:
                if batch:
                    request = pb.BatchRecordGenerationsRequest(
                        generations=[_record(rng, names) for _ in range(batch)]
                    )
                    await stub.BatchRecordGenerations(request, timeout=30)
                    done += batch
                else:
                    await stub.RecordGeneration(_record(rng, names), timeout=30)
                    done += 1
            except grpc.aio.AioRpcError:
                failed += batch or 1

    async with grpc.aio.insecure_channel(target) as channel:
        stub: pb_grpc.AnalyticsServiceAsyncStub = pb_grpc.AnalyticsServiceStub(channel)
        started = time.perf_counter()
        await asyncio.gather(*(worker(stub) for _ in range(concurrency)))
        return done, time.perf_counter() - started, failed
