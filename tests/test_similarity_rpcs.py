"""SimilarityService over real gRPC and PostgreSQL: ordering, exclusion, errors, recommend.

Also holds the helpers the other test_similarity_* files import: seeding rows
with SQL (the similarity service only reads) and an in-process server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from sqlalchemy import text

from services.similarity.app import Settings, build
from services.similarity.search import vector_literal
from shared.db.engine import Database
from shared.grpc.server import start_server, stop_server
from shared.grpc.status import error_info, field_violations
from shared.metrics import SIMILARITY, registry
from shared.settings import ServiceSettings
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc

DIM = 384
if TYPE_CHECKING:
    # The async stub type exists only in the generated .pyi; at runtime the plain
    # stub class, given an aio channel, is the async stub.
    Stub = pb_grpc.SimilarityServiceAsyncStub
else:
    Stub = pb_grpc.SimilarityServiceStub


@dataclass
class Row:
    name: str
    embedding: Sequence[float] | None = None
    tempo: float = 120.0
    status: str = "cached"
    has_profile: bool = True


async def seed(db: Database, rows: Sequence[Row]) -> dict[str, uuid.UUID]:
    """Insert artists and profiles in two statements; returns name -> artist id."""
    ids = {row.name: uuid.uuid4() for row in rows}
    profiled = [row for row in rows if row.has_profile]
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO artists (id, name, research_status) SELECT * FROM "
                "unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:st AS text[]))"
            ),
            {
                "ids": [ids[r.name] for r in rows],
                "names": [r.name for r in rows],
                "st": [r.status for r in rows],
            },
        )
        await session.execute(
            text(
                "INSERT INTO style_profiles (id, artist_id, text_description,"
                " quantitative_params, embedding, confidence_score)"
                " SELECT gen_random_uuid(), t.id, 'seeded',"
                " jsonb_build_object('tempo_avg', t.tempo), CAST(t.emb AS vector), 0.5"
                " FROM unnest(CAST(:ids AS uuid[]), CAST(:tempos AS float8[]),"
                " CAST(:embs AS text[])) AS t(id, tempo, emb)"
            ),
            {
                "ids": [ids[r.name] for r in profiled],
                "tempos": [r.tempo for r in profiled],
                "embs": [
                    None if r.embedding is None else vector_literal(r.embedding) for r in profiled
                ],
            },
        )
        await session.execute(text("ANALYZE artists"))
        await session.execute(text("ANALYZE style_profiles"))
    return ids


def clustered(n: int, *, clusters: int = 20, spread: float = 0.6, seed: int = 7) -> np.ndarray:
    """n unit vectors around random cluster centres, like real embeddings group by genre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    points = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, DIM))
    unit: np.ndarray = points / np.linalg.norm(points, axis=1, keepdims=True)
    return unit


def exact_neighbours(vectors: np.ndarray, query: np.ndarray, k: int, skip: set[int]) -> list[int]:
    """Indices of the k most cosine-similar rows, computed independently of the service."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    sims = vectors @ query / norms
    order = [int(i) for i in np.argsort(-sims, kind="stable") if int(i) not in skip]
    return order[:k]


@asynccontextmanager
async def similarity_stub(settings: ServiceSettings, **overrides: Any) -> AsyncIterator[Stub]:
    """The service's own wiring (build) behind an in-process server on a free port."""
    service_settings = Settings(
        POSTGRES_DATABASE_URL=settings.database_url, db_pool_size=5, **overrides
    )
    running = await start_server("127.0.0.1:0", await build(service_settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.SimilarityServiceStub(channel)
    finally:
        await stop_server(running, grace=0)


@pytest.fixture(scope="module")
async def stub(settings: ServiceSettings) -> AsyncIterator[Stub]:
    async with similarity_stub(settings) as client:
        yield client


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def names(reply: Any) -> list[str]:
    return [a.artist_name for a in reply.artists]


def unit(*pairs: tuple[int, float]) -> list[float]:
    """A 384-d vector with the given (index, value) entries, the rest zero."""
    v = [0.0] * DIM
    for i, x in pairs:
        v[i] = x
    return v


async def test_find_similar_returns_nearest_others_best_first(
    clean_db: Database, stub: Stub
) -> None:
    vectors = clustered(60, clusters=4)
    await seed(clean_db, [Row(f"artist-{i:02d}", vectors[i]) for i in range(60)])
    reply = await stub.FindSimilarArtists(
        pb.FindSimilarArtistsRequest(artist_name="artist-07", limit=10), timeout=10
    )
    expected = exact_neighbours(vectors, vectors[7], 10, skip={7})
    assert names(reply) == [f"artist-{i:02d}" for i in expected]
    sims = [a.similarity for a in reply.artists]
    assert sims == sorted(sims, reverse=True)
    for artist in reply.artists:
        i = int(artist.artist_name.split("-")[1])
        assert artist.similarity == pytest.approx(float(vectors[i] @ vectors[7]), abs=1e-5)


async def test_find_similar_defaults_to_five_results(clean_db: Database, stub: Stub) -> None:
    vectors = clustered(12)
    await seed(clean_db, [Row(f"a{i}", vectors[i]) for i in range(12)])
    reply = await stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="a0"))
    assert len(reply.artists) == 5
    assert "a0" not in names(reply)


async def test_equal_distances_come_back_in_name_order(clean_db: Database, stub: Stub) -> None:
    twin = unit((0, 1.0), (1, 1.0))
    await seed(
        clean_db,
        [
            Row("query", unit((0, 1.0))),
            Row("zeta", twin),
            Row("alpha", twin),
            Row("mid", twin),
            Row("far", unit((5, 1.0))),
        ],
    )
    reply = await stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="query"))
    assert names(reply) == ["alpha", "mid", "zeta", "far"]
    assert reply.artists[0].similarity == pytest.approx(reply.artists[2].similarity)
    assert reply.artists[0].similarity == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert reply.artists[3].similarity == pytest.approx(0.0, abs=1e-6)


async def test_only_artist_has_no_similar_artists(clean_db: Database, stub: Stub) -> None:
    await seed(clean_db, [Row("alone", unit((0, 1.0)))])
    reply = await stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="alone"))
    assert list(reply.artists) == []


async def test_empty_database_gives_empty_search(clean_db: Database, stub: Stub) -> None:
    reply = await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=unit((3, 1.0))))
    assert list(reply.artists) == []


async def test_unknown_artist_is_not_found_with_reason(clean_db: Database, stub: Stub) -> None:
    error = await rpc_error(
        stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="Nobody"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"


@pytest.mark.parametrize(
    ("row", "says"),
    [
        (Row("bare", has_profile=False), "no style profile"),
        (Row("bare", embedding=None), "without an embedding"),
    ],
)
async def test_artist_without_profile_or_embedding_is_failed_precondition(
    clean_db: Database, stub: Stub, row: Row, says: str
) -> None:
    await seed(clean_db, [row, Row("other", unit((0, 1.0)))])
    error = await rpc_error(
        stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="bare"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert says in (error.details() or "")


@pytest.mark.parametrize("limit", [21, -1, 1000])
async def test_limit_outside_1_to_20_is_invalid_argument_on_every_search(
    clean_db: Database, stub: Stub, limit: int
) -> None:
    await seed(clean_db, [Row("a", unit((0, 1.0))), Row("b", unit((1, 1.0)))])
    calls = [
        stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="a", limit=limit)),
        stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=unit((0, 1.0)), limit=limit)),
        stub.Recommend(pb.RecommendRequest(positive_artists=["a"], limit=limit)),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error)[0][0] == "limit"


async def test_limit_bounds_are_inclusive(clean_db: Database, stub: Stub) -> None:
    vectors = clustered(30)
    await seed(clean_db, [Row(f"a{i}", vectors[i]) for i in range(30)])
    one = await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=vectors[0], limit=1))
    twenty = await stub.SearchByEmbedding(
        pb.SearchByEmbeddingRequest(embedding=vectors[0], limit=20)
    )
    assert names(one) == ["a0"]
    assert len(twenty.artists) == 20


@pytest.mark.parametrize(
    ("embedding", "field"),
    [
        (unit((0, float("nan"))), "embedding[0]"),
        (unit((4, float("inf"))), "embedding[4]"),
        (unit((4, float("-inf"))), "embedding[4]"),
        ([0.0] * DIM, "embedding"),
        ([1.0] * (DIM - 1), "embedding"),
        ([1.0] * (DIM + 1), "embedding"),
        ([], "embedding"),
    ],
)
async def test_bad_query_vectors_are_invalid_argument(
    stub: Stub, embedding: list[float], field: str
) -> None:
    error = await rpc_error(
        stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=embedding))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == field


async def test_search_by_embedding_excludes_names_and_cuts_at_min_similarity(
    clean_db: Database, stub: Stub
) -> None:
    await seed(
        clean_db,
        [
            Row("same", unit((0, 1.0))),
            Row("close", unit((0, 1.0), (1, 0.2))),
            Row("half", unit((0, 1.0), (1, 1.0))),
            Row("orthogonal", unit((1, 1.0))),
            Row("opposite", unit((0, -1.0))),
        ],
    )
    query = unit((0, 1.0))
    everything = await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=query))
    assert names(everything) == ["same", "close", "half", "orthogonal", "opposite"]
    assert everything.artists[-1].similarity == pytest.approx(-1.0, abs=1e-6)
    cut = await stub.SearchByEmbedding(
        pb.SearchByEmbeddingRequest(embedding=query, exclude_names=["same"], min_similarity=0.5)
    )
    assert names(cut) == ["close", "half"]
    error = await rpc_error(
        stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=query, min_similarity=1.5))
    )
    assert field_violations(error)[0][0] == "min_similarity"


async def test_recommend_queries_mean_of_positives_minus_mean_of_negatives(
    clean_db: Database, stub: Stub
) -> None:
    vectors = clustered(80, clusters=5, seed=11)
    await seed(clean_db, [Row(f"r{i:02d}", vectors[i]) for i in range(80)])
    positives, negatives = [3, 17, 42], [5]
    query = vectors[positives].mean(axis=0) - vectors[negatives].mean(axis=0)
    expected = exact_neighbours(vectors, query, 8, skip={*positives, *negatives})
    reply = await stub.Recommend(
        pb.RecommendRequest(
            positive_artists=[f"r{i:02d}" for i in positives],
            negative_artists=[f"r{i:02d}" for i in negatives],
            limit=8,
            options=pb.SearchOptions(exact=True),
        )
    )
    assert names(reply) == [f"r{i:02d}" for i in expected]


async def test_recommend_never_returns_an_input_artist(clean_db: Database, stub: Stub) -> None:
    vectors = clustered(8)
    await seed(clean_db, [Row(f"x{i}", vectors[i]) for i in range(8)])
    reply = await stub.Recommend(
        pb.RecommendRequest(positive_artists=["x0", "x1", "x2"], negative_artists=["x3"], limit=20)
    )
    assert sorted(names(reply)) == ["x4", "x5", "x6", "x7"]


async def test_recommend_rejects_bad_artist_lists(clean_db: Database, stub: Stub) -> None:
    await seed(clean_db, [Row("p", unit((0, 1.0))), Row("q", unit((1, 1.0)))])
    none = await rpc_error(stub.Recommend(pb.RecommendRequest(negative_artists=["p"])))
    assert none.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(none)[0][0] == "positive_artists"
    both = await rpc_error(
        stub.Recommend(pb.RecommendRequest(positive_artists=["p"], negative_artists=["p"]))
    )
    assert field_violations(both)[0][0] == "negative_artists"
    unknown = await rpc_error(
        stub.Recommend(pb.RecommendRequest(positive_artists=["p"], negative_artists=["ghost"]))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(unknown)
    assert info is not None and info.metadata["artist_name"] == "ghost"


async def test_searches_run_through_the_read_only_role_when_configured(
    clean_db: Database, settings: ServiceSettings
) -> None:
    assert settings.database_url is not None
    readonly = settings.database_url.replace("postgres@", "stylebase_readonly@", 1)
    await seed(clean_db, [Row("a", unit((0, 1.0))), Row("b", unit((0, 1.0), (1, 1.0)))])
    async with similarity_stub(settings, POSTGRES_READONLY_DATABASE_URL=readonly) as client:
        reply = await client.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="a"))
        async with clean_db.transaction() as session:
            users = await session.execute(
                text(
                    "SELECT DISTINCT usename FROM pg_stat_activity"
                    " WHERE application_name = 'similarity'"
                )
            )
            assert "stylebase_readonly" in set(users.scalars())
    assert names(reply) == ["b"]


async def test_searches_are_counted_by_kind(clean_db: Database, stub: Stub) -> None:
    await seed(clean_db, [Row("a", unit((0, 1.0))), Row("b", unit((1, 1.0)))])

    def count(kind: str) -> float:
        return (
            registry(SIMILARITY).get_sample_value("db_similarity_searches_total", {"kind": kind})
            or 0.0
        )

    before = {k: count(k) for k in ("find_similar", "search_by_embedding", "recommend")}
    await stub.FindSimilarArtists(pb.FindSimilarArtistsRequest(artist_name="a"))
    await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=unit((0, 1.0))))
    await stub.SearchByEmbedding(pb.SearchByEmbeddingRequest(embedding=unit((1, 1.0))))
    await stub.Recommend(pb.RecommendRequest(positive_artists=["a"]))
    after = {k: count(k) - before[k] for k in before}
    assert after == {"find_similar": 1, "search_by_embedding": 2, "recommend": 1}


async def test_measure_recall_with_no_embeddings_is_failed_precondition(
    clean_db: Database, stub: Stub
) -> None:
    await seed(clean_db, [Row("no-vector", embedding=None)])
    error = await rpc_error(stub.MeasureRecall(pb.MeasureRecallRequest()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
