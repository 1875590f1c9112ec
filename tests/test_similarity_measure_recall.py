"""MeasureRecall: its figures on a small dataset, and its cap on the work one call may do."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from shared.db.engine import Database
from shared.grpc.status import field_violations
from shared.settings import ServiceSettings
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from tests.test_similarity_rpcs import (
    Row,
    clustered,
    exact_neighbours,
    rpc_error,
    seed,
    similarity_stub,
)

N, K = 200, 10


@pytest.fixture
async def small(clean_db: Database) -> np.ndarray:
    data = clustered(N, clusters=5, spread=10.0, seed=11)
    await seed(clean_db, [Row(f"s{i:03d}", data[i]) for i in range(N)])
    return data


async def test_measure_recall_over_every_artist_equals_find_similar_against_exact_truth(
    small: np.ndarray, settings: ServiceSettings
) -> None:
    """With every artist in the sample the figure is deterministic: the mean, over artists, of
    FindSimilarArtists' index answer against numpy's exact neighbours, at the same ef_search."""
    async with similarity_stub(settings) as stub:
        for ef in (1, 40):
            expected = []
            for i in range(N):
                reply = await stub.FindSimilarArtists(
                    pb.FindSimilarArtistsRequest(
                        artist_name=f"s{i:03d}", limit=K, options=pb.SearchOptions(ef_search=ef)
                    ),
                    timeout=10,
                )
                found = {int(a.artist_name[1:]) for a in reply.artists}
                truth = set(exact_neighbours(small, small[i], K, skip={i}))
                expected.append(len(found & truth) / K)
            measured = await stub.MeasureRecall(
                pb.MeasureRecallRequest(sample_size=N, k=K, ef_search=ef), timeout=30
            )
            print(f"ef_search {ef}: recall {measured.recall:.4f}, expected {np.mean(expected):.4f}")
            assert (measured.sample_size, measured.k, measured.ef_search) == (N, K, ef)
            assert measured.recall == pytest.approx(float(np.mean(expected)), abs=1e-9)


async def test_measure_recall_cuts_its_sample_to_the_distance_cap(
    small: np.ndarray, settings: ServiceSettings
) -> None:
    async with similarity_stub(settings, SIMILARITY_RECALL_MAX_DISTANCES=1000) as stub:
        reply = await stub.MeasureRecall(pb.MeasureRecallRequest(sample_size=100), timeout=30)
    # 1000 distances over 200 stored embeddings: 5 queries.
    assert reply.sample_size == 1000 // N
    assert 0.0 <= reply.recall <= 1.0


async def test_measure_recall_sample_above_the_cap_is_invalid_argument(
    small: np.ndarray, settings: ServiceSettings
) -> None:
    async with similarity_stub(settings, SIMILARITY_RECALL_SAMPLE_MAX=50) as stub:
        error = await rpc_error(stub.MeasureRecall(pb.MeasureRecallRequest(sample_size=51)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error)[0][0] == "sample_size"
        # The default (100) is cut to the cap rather than refused.
        reply = await stub.MeasureRecall(pb.MeasureRecallRequest(), timeout=30)
        assert reply.sample_size == 50
