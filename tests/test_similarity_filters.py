"""Tempo and research-status filters, per-request options and their validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

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


@pytest.fixture(scope="module")
async def stub(settings: ServiceSettings) -> AsyncIterator[Stub]:
    async with similarity_stub(settings) as client:
        yield client


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
