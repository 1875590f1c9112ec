"""Filters, per-request tuning and the query plans: index scans, exact mode, selective filters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
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
from shared.grpc.status import field_violations
from shared.settings import ServiceSettings
from stylebase.common.v1 import common_pb2
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from tests.test_similarity_rpcs import (
    Row,
    Stub,
    clustered,
    exact_neighbours,
    names,
    rpc_error,
    seed,
    similarity_stub,
    unit,
)

N = 2000
INDEX = "ix_style_profiles_embedding"


@pytest.fixture(scope="module")
async def stub(settings: ServiceSettings) -> AsyncIterator[Stub]:
    async with similarity_stub(settings) as client:
        yield client


async def seed_with_rare_slice(db: Database) -> np.ndarray:
    """N clustered artists; every 100th one (1%) is 'failed' with a tempo of 200..209."""
    vectors = clustered(N, seed=3)
    rows = [
        Row(f"n{i:04d}", vectors[i], tempo=200 + i % 10, status="failed")
        if i % 100 == 0
        else Row(f"n{i:04d}", vectors[i], tempo=80 + i % 60)
        for i in range(N)
    ]
    await seed(db, rows)
    return vectors


async def plan(db: Database, query: Query, *, exact: bool) -> str:
    """The plan of exactly the SQL the service runs for this query."""
    sql, params = search_sql(query, exact=exact)
    async with db.transaction() as session:
        result = await session.execute(text("EXPLAIN (FORMAT JSON) " + sql), params)
        return json.dumps(result.scalar())


async def test_default_searches_are_served_by_the_hnsw_index(clean_db: Database) -> None:
    vectors = await seed_with_rare_slice(clean_db)
    by_vector = Query(10, vector=vector_literal(vectors[0]), exclude_names=["n0000"])
    by_artist = Query(10, source_name="n0001")
    assert INDEX in await plan(clean_db, by_vector, exact=False)
    assert INDEX in await plan(clean_db, by_artist, exact=False)


async def test_exact_mode_bypasses_the_index(clean_db: Database) -> None:
    vectors = await seed_with_rare_slice(clean_db)
    by_vector = Query(10, vector=vector_literal(vectors[0]), exclude_names=["n0000"])
    by_artist = Query(10, source_name="n0001")
    assert INDEX not in await plan(clean_db, by_vector, exact=True)
    assert INDEX not in await plan(clean_db, by_artist, exact=True)


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
    clean_db: Database, settings: ServiceSettings, max_scan_tuples: int
) -> None:
    """The planner cannot estimate the JSONB tempo filter and picks the index; with 50
    tuples an iterative scan cannot reach 1% of 2,000 rows, so only the exact
    fallback fills the limit. The status filter has statistics, so the planner
    may choose the exact plan itself; either way every match must come back."""
    vectors = await seed_with_rare_slice(clean_db)
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


async def test_tempo_range_is_inclusive_and_combines_with_status(
    clean_db: Database, stub: Stub
) -> None:
    await seed(
        clean_db,
        [
            Row("t90", unit((0, 1.0)), tempo=90),
            Row("t100", unit((0, 1.0), (1, 0.1)), tempo=100),
            Row("t105", unit((0, 1.0), (1, 0.2)), tempo=105, status="pending"),
            Row("t110", unit((0, 1.0), (1, 0.3)), tempo=110),
            Row("t120", unit((0, 1.0), (1, 0.4)), tempo=120),
        ],
    )
    band = pb.SimilarityFilter(tempo_min=100, tempo_max=110)
    query = unit((0, 1.0))
    reply = await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=query, filter=band))
    assert names(reply) == ["t100", "t105", "t110"]
    band.research_status = common_pb2.RESEARCH_STATUS_CACHED
    reply = await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=query, filter=band))
    assert names(reply) == ["t100", "t110"]
    only_max = await stub.FindSimilarArtists(
        pb.FindSimilarArtistsRequest(artist_name="t120", filter=pb.SimilarityFilter(tempo_max=100))
    )
    assert names(only_max) == ["t100", "t90"]


async def test_filters_matching_nothing_give_empty_results_on_every_search(
    clean_db: Database, stub: Stub
) -> None:
    vectors = clustered(40)
    await seed(clean_db, [Row(f"f{i}", vectors[i], tempo=120) for i in range(40)])
    nothing = pb.SimilarityFilter(tempo_min=300)
    replies: list[Any] = [
        await stub.FindSimilarArtists(
            pb.FindSimilarArtistsRequest(artist_name="f0", filter=nothing)
        ),
        await stub.SearchByEmbedding(
            pb.SearchByEmbeddingRequest(embedding=vectors[0], filter=nothing)
        ),
        await stub.Recommend(pb.RecommendRequest(positive_artists=["f0"], filter=nothing)),
        await stub.FindSimilarArtists(
            pb.FindSimilarArtistsRequest(
                artist_name="f0",
                filter=pb.SimilarityFilter(research_status=common_pb2.RESEARCH_STATUS_FAILED),
            )
        ),
    ]
    assert [list(r.artists) for r in replies] == [[], [], [], []]


@pytest.mark.parametrize(
    ("search_filter", "field"),
    [
        (pb.SimilarityFilter(tempo_min=130, tempo_max=120), "filter.tempo_min"),
        (pb.SimilarityFilter(tempo_min=float("nan")), "filter.tempo_min"),
        (pb.SimilarityFilter(tempo_max=float("inf")), "filter.tempo_max"),
        (pb.SimilarityFilter(research_status=99), "filter.research_status"),  # type: ignore[arg-type]
    ],
)
async def test_nonsense_filters_are_invalid_argument(
    stub: Stub, search_filter: pb.SimilarityFilter, field: str
) -> None:
    error = await rpc_error(
        stub.SearchByEmbedding(
            pb.SearchByEmbeddingRequest(embedding=unit((0, 1.0)), filter=search_filter)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == field


@pytest.mark.parametrize("ef_search", [-1, 1001])
async def test_ef_search_outside_1_to_1000_is_invalid_argument(stub: Stub, ef_search: int) -> None:
    error = await rpc_error(
        stub.SearchByEmbedding(
            pb.SearchByEmbeddingRequest(
                embedding=unit((0, 1.0)), options=pb.SearchOptions(ef_search=ef_search)
            )
        )
    )
    assert field_violations(error)[0][0] == "options.ef_search"


@pytest.mark.parametrize(
    "options", [pb.SearchOptions(exact=True), pb.SearchOptions(ef_search=1000)]
)
async def test_exact_and_tuned_searches_agree_with_exact_results(
    clean_db: Database, stub: Stub, options: pb.SearchOptions
) -> None:
    vectors = clustered(300, seed=5)
    await seed(clean_db, [Row(f"e{i:03d}", vectors[i]) for i in range(300)])
    reply = await stub.FindSimilarArtists(
        pb.FindSimilarArtistsRequest(artist_name="e042", limit=20, options=options)
    )
    expected = exact_neighbours(vectors, vectors[42], 20, skip={42})
    assert names(reply) == [f"e{i:03d}" for i in expected]
