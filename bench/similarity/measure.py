"""Latency, throughput and recall of FindSimilarArtists over gRPC, and the numpy reference."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from bench.similarity.data import name_of
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc

K = 10


@dataclass(frozen=True)
class Latencies:
    in_flight: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_second: float

    def line(self) -> str:
        return (
            f"  {self.in_flight:>2} in flight: p50 {self.p50_ms:6.2f} ms  p95 {self.p95_ms:6.2f} ms"
            f"  p99 {self.p99_ms:6.2f} ms  {self.per_second:8.0f} req/s"
        )


def summarise(samples_s: list[float], in_flight: int, elapsed_s: float) -> Latencies:
    ms = np.array(samples_s) * 1000
    p50, p95, p99 = (float(np.percentile(ms, p)) for p in (50, 95, 99))
    return Latencies(in_flight, p50, p95, p99, len(samples_s) / elapsed_s)


async def timed_calls(
    call: Callable[[int], Awaitable[None]], queries: np.ndarray, in_flight: int
) -> Latencies:
    """Each of in_flight workers sends its share of the queries back to back, after 50
    untimed calls that warm the pool, the plan cache and the index pages."""
    samples: list[float] = []

    async def timed(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)

    for i in queries[:50]:
        await call(int(i))

    async def worker(share: np.ndarray) -> None:
        for i in share:
            await timed(int(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in np.array_split(queries, in_flight)))
    return summarise(samples, in_flight, time.perf_counter() - started)


async def grpc_latencies(
    target: str, queries: np.ndarray, *, in_flight: int, ef_search: int = 0
) -> Latencies:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SimilarityServiceStub(channel)
        options = pb.SearchOptions(ef_search=ef_search)

        async def call(i: int) -> None:
            request = pb.FindSimilarArtistsRequest(artist_name=name_of(i), limit=K, options=options)
            await stub.FindSimilarArtists(request, timeout=30)

        return await timed_calls(call, queries, in_flight)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> list[set[int]]:
    """Exact neighbours of each query artist (itself left out), for recall."""
    out: list[set[int]] = []
    for i in queries:
        sims = vectors @ vectors[i]
        sims[i] = -np.inf
        top = np.argpartition(-sims, k)[:k]
        out.append({int(j) for j in top})
    return out


async def grpc_recall(
    target: str, vectors: np.ndarray, queries: np.ndarray, *, ef_search: int = 0
) -> float:
    truth = exact_top_k(vectors, queries)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SimilarityServiceStub(channel)
        hits = 0
        for i, expected in zip(queries, truth, strict=True):
            reply = await stub.FindSimilarArtists(
                pb.FindSimilarArtistsRequest(
                    artist_name=name_of(int(i)),
                    limit=K,
                    options=pb.SearchOptions(ef_search=ef_search),
                ),
                timeout=30,
            )
            found = {int(a.artist_name.rsplit("-", 1)[1]) for a in reply.artists}
            hits += len(found & expected)
    return hits / (K * len(queries))


def numpy_exact(vectors: np.ndarray, queries: np.ndarray) -> Latencies:
    """In-process exact top-10 by cosine over unit vectors (one matrix-vector product)."""
    samples: list[float] = []
    started = time.perf_counter()
    for i in queries:
        t = time.perf_counter()
        sims = vectors @ vectors[i]
        sims[i] = -np.inf
        top = np.argpartition(-sims, K)[:K]
        top[np.argsort(-sims[top])]
        samples.append(time.perf_counter() - t)
    return summarise(samples, 1, time.perf_counter() - started)
