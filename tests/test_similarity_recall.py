"""Recall of the HNSW index on 2,000 synthetic artists, MeasureRecall and the recall canary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from sqlalchemy import text

from services.similarity.app import Settings, build
from services.similarity.repository import SimilarityRepository
from services.similarity.search import IndexSettings
from shared.db.engine import Database
from shared.errors import DeadlineExceeded
from shared.grpc.status import field_violations
from shared.metrics import SIMILARITY, SIMILARITY_RECALL, registry
from shared.settings import ServiceSettings
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from tests.test_similarity_rpcs import (
    Row,
    Stub,
    clustered,
    exact_neighbours,
    rpc_error,
    seed,
    similarity_stub,
)

N, K, QUERIES = 2000, 10, 100
# Statements the similarity service is running (the module's stub is its only client).
ACTIVE_RECALL_SQL = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE state = 'active' AND application_name = 'similarity'"
)


@pytest.fixture(scope="module")
async def vectors(db: Database) -> np.ndarray:
    """2,000 clustered artists, loaded once for the module (no test here writes)."""
    async with db.transaction() as session:
        await session.execute(text("TRUNCATE artists CASCADE"))
    data = clustered(N, clusters=40, seed=2024)
    await seed(db, [Row(f"r{i:04d}", data[i]) for i in range(N)])
    return data


@pytest.fixture(scope="module")
async def stub(settings: ServiceSettings, vectors: np.ndarray) -> AsyncIterator[Stub]:
    async with similarity_stub(settings) as client:
        yield client


async def test_index_recall_at_10_on_2000_artists_is_at_least_095(
    vectors: np.ndarray, stub: Stub
) -> None:
    queries = np.random.default_rng(1).choice(N, QUERIES, replace=False)
    recalls = []
    for q in queries:
        reply = await stub.FindSimilarArtists(
            pb.FindSimilarArtistsRequest(artist_name=f"r{q:04d}", limit=K), timeout=10
        )
        found = {int(a.artist_name[1:]) for a in reply.artists}
        truth = set(exact_neighbours(vectors, vectors[q], K, skip={int(q)}))
        recalls.append(len(found & truth) / K)
    assert float(np.mean(recalls)) >= 0.95


async def test_measure_recall_compares_index_with_exact_search(
    vectors: np.ndarray, stub: Stub
) -> None:
    reply = await stub.MeasureRecall(pb.MeasureRecallRequest(sample_size=40, k=K), timeout=30)
    assert reply.sample_size == 40 and reply.k == K and reply.ef_search == 40
    assert 0.95 <= reply.recall <= 1.0
    assert reply.index_latency_ms_mean > 0 and reply.exact_latency_ms_mean > 0
    tuned = await stub.MeasureRecall(pb.MeasureRecallRequest(sample_size=5, ef_search=200))
    assert (tuned.sample_size, tuned.k, tuned.ef_search) == (5, 10, 200)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.MeasureRecallRequest(sample_size=1001), "sample_size"),
        (pb.MeasureRecallRequest(sample_size=201), "sample_size"),
        (pb.MeasureRecallRequest(sample_size=-1), "sample_size"),
        (pb.MeasureRecallRequest(k=101), "k"),
        (pb.MeasureRecallRequest(ef_search=1001), "ef_search"),
    ],
)
async def test_measure_recall_bounds_are_invalid_argument(
    stub: Stub, request_: pb.MeasureRecallRequest, field: str
) -> None:
    error = await rpc_error(stub.MeasureRecall(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == field


async def test_measure_recall_deadline_bounds_the_whole_measurement(
    vectors: np.ndarray, db: Database
) -> None:
    """A lock holds the first statement until 0.05 s before the deadline; the later statements
    may only have what is left, less than the exact part needs (at 0.15 s a quiet machine
    sometimes finished it in time). (Given the whole deadline
    afresh, as a per-statement timeout does, each of them fits and the measurement runs on for
    seconds past the deadline.)"""
    repository = SimilarityRepository(db, IndexSettings())
    deadline = 2.0
    locked = asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as session:
            await session.execute(text("LOCK TABLE style_profiles IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            await asyncio.sleep(deadline - 0.05)

    holder = asyncio.create_task(hold())
    await locked.wait()
    try:
        with pytest.raises(DeadlineExceeded):
            await repository.measure_recall(
                sample_size=200, k=K, ef_search=None, time_left=deadline
            )
    finally:
        await holder


async def test_measure_recall_over_grpc_stops_at_the_callers_deadline(
    vectors: np.ndarray, stub: Stub, db: Database
) -> None:
    error = await rpc_error(
        stub.MeasureRecall(pb.MeasureRecallRequest(sample_size=200), timeout=0.05)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Nothing of it runs on in the database once the caller has gone.
    running = -1
    for _ in range(40):
        async with db.transaction() as session:
            running = (await session.execute(text(ACTIVE_RECALL_SQL))).scalar_one()
        if running == 0:
            break
        await asyncio.sleep(0.05)
    assert running == 0


async def test_recall_canary_exports_the_gauge_when_enabled(
    vectors: np.ndarray, settings: ServiceSettings
) -> None:
    SIMILARITY_RECALL.labels(k="5").set(-1)
    async with similarity_stub(
        settings,
        SIMILARITY_RECALL_CANARY_INTERVAL_SECONDS=0.1,
        SIMILARITY_RECALL_CANARY_SAMPLE_SIZE=10,
        SIMILARITY_RECALL_CANARY_K=5,
    ):
        for _ in range(300):
            value = registry(SIMILARITY).get_sample_value("similarity_index_recall", {"k": "5"})
            if value is not None and value >= 0:
                break
            await asyncio.sleep(0.1)
    assert value is not None and 0.9 <= value <= 1.0


async def test_recall_canary_is_off_by_default(settings: ServiceSettings) -> None:
    definition = await build(Settings(POSTGRES_DATABASE_URL=settings.database_url))
    try:
        assert definition.background == []
    finally:
        for cleanup in definition.cleanups:
            await cleanup()
