"""Query plans and index tuning on 2,000 artists: HNSW scans, exact mode, selective filters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from services.similarity.search import (
    IndexSettings,
    Query,
    SimilaritySearch,
    configure_sessions,
    search_sql,
    vector_literal,
)
from shared.db.engine import Database
from shared.settings import ServiceSettings
from stylebase.common.v1 import common_pb2
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from tests.test_similarity_rpcs import (
    Row,
    clustered,
    exact_neighbours,
    names,
    seed,
    similarity_stub,
)

N = 2000
INDEX = "ix_style_profiles_embedding"


@pytest.fixture(scope="module")
async def vectors(db: Database) -> np.ndarray:
    """N clustered artists, loaded once for the module (no test here writes); every
    100th one (1%) is 'failed' with a tempo of 200..209."""
    async with db.transaction() as session:
        await session.execute(text("TRUNCATE artists CASCADE"))
    data = clustered(N, seed=3)
    rows = [
        Row(f"n{i:04d}", data[i], tempo=200 + i % 10, status="failed")
        if i % 100 == 0
        else Row(f"n{i:04d}", data[i], tempo=80 + i % 60)
        for i in range(N)
    ]
    await seed(db, rows)
    return data


async def plan(db: Database, query: Query, *, exact: bool) -> str:
    """The plan of exactly the SQL the service runs for this query."""
    sql, params = search_sql(query, exact=exact)
    async with db.transaction() as session:
        result = await session.execute(text("EXPLAIN (FORMAT JSON) " + sql), params)
        return json.dumps(result.scalar())


async def test_default_searches_are_served_by_the_hnsw_index(
    db: Database, vectors: np.ndarray
) -> None:
    by_vector = Query(10, vector=vector_literal(vectors[0]), exclude_names=["n0000"])
    by_artist = Query(10, source_name="n0001")
    assert INDEX in await plan(db, by_vector, exact=False)
    assert INDEX in await plan(db, by_artist, exact=False)


async def test_exact_mode_bypasses_the_index(db: Database, vectors: np.ndarray) -> None:
    by_vector = Query(10, vector=vector_literal(vectors[0]), exclude_names=["n0000"])
    by_artist = Query(10, source_name="n0001")
    assert INDEX not in await plan(db, by_vector, exact=True)
    assert INDEX not in await plan(db, by_artist, exact=True)


async def test_connections_start_with_index_defaults_and_requests_tune_locally(
    settings: ServiceSettings,
) -> None:
    index = IndexSettings(ef_search=40, max_scan_tuples=777)
    db = Database.connect(settings, application_name="similarity-tuning-test")
    configure_sessions(db.engine, index)
    search = SimilaritySearch(index)
    current = text(
        "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan'),"
        " current_setting('hnsw.max_scan_tuples')"
    )
    try:
        async with db.transaction() as session:
            assert await search.tune(session, 123) == 123
            inside = tuple((await session.execute(current)).one())
        async with db.transaction() as session:
            assert await search.tune(session, None) == 40
            after = tuple((await session.execute(current)).one())
    finally:
        await db.dispose()
    assert inside == ("123", "relaxed_order", "777")
    assert after == ("40", "relaxed_order", "777")


ONE_PERCENT = [
    pb.SimilarityFilter(tempo_min=200),
    pb.SimilarityFilter(research_status=common_pb2.RESEARCH_STATUS_FAILED),
    pb.SimilarityFilter(research_status=common_pb2.RESEARCH_STATUS_FAILED, tempo_min=200),
]


@pytest.mark.parametrize("max_scan_tuples", [20_000, 50])
async def test_filter_matching_one_percent_still_fills_the_limit(
    vectors: np.ndarray, settings: ServiceSettings, max_scan_tuples: int
) -> None:
    """The planner cannot estimate the JSONB tempo filter and picks the index; with 50
    tuples an iterative scan cannot reach 1% of 2,000 rows, so only the exact
    fallback fills the limit. The status filter has statistics, so the planner
    may choose the exact plan itself; either way every match must come back."""
    rare = [i for i in range(N) if i % 100 == 0]
    expected = [rare[j] for j in exact_neighbours(vectors[rare], vectors[1], 15, skip=set())]
    async with similarity_stub(
        settings, SIMILARITY_MAX_SCAN_TUPLES=max_scan_tuples, SIMILARITY_EF_SEARCH=10
    ) as client:
        for search_filter in ONE_PERCENT:
            by_vector = await client.SearchByEmbedding(
                pb.SearchByEmbeddingRequest(embedding=vectors[1], limit=15, filter=search_filter)
            )
            assert names(by_vector) == [f"n{i:04d}" for i in expected], search_filter
            by_artist = await client.FindSimilarArtists(
                pb.FindSimilarArtistsRequest(artist_name="n0001", limit=20, filter=search_filter)
            )
            assert len(by_artist.artists) == 20, search_filter
