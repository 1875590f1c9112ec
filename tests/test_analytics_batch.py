"""BatchRecordGenerations over real gRPC and PostgreSQL: all of a batch or none of it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.grpc.status import error_info, field_violations
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from tests.analytics_support import Stub, add_artist, analytics_server, request, truth


@pytest.fixture(scope="module")
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with analytics_server(database_url) as client:
        yield client


def _batch(*items: pb.RecordGenerationRequest) -> pb.BatchRecordGenerationsRequest:
    return pb.BatchRecordGenerationsRequest(generations=list(items))


async def _count(db: Database) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(text("SELECT count(*) FROM generation_history")) or 0)


async def test_a_batch_is_stored_in_request_order_and_counted_by_stats(
    stub: Stub, clean_db: Database
) -> None:
    artist_id = await add_artist(clean_db, "Tony Allen")
    items = [
        request(artist="Tony Allen", provider="openai", time_ms=100 + i, cost=0.01 * i)
        for i in range(5)
    ] + [request(provider="template", time_ms=7)]
    reply = await stub.BatchRecordGenerations(_batch(*items), timeout=10)
    assert [g.generation_time_ms for g in reply.generations] == [100, 101, 102, 103, 104, 7]
    assert [g.artist_id for g in reply.generations] == [str(artist_id)] * 5 + [""]
    assert len({uuid.UUID(g.id) for g in reply.generations}) == 6
    raw = await truth(clean_db)
    assert (raw.total, raw.sum_time) == (6, 100 + 101 + 102 + 103 + 104 + 7)
    stats = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert stats.total_generations == 6
    assert dict(stats.provider_usage) == {"openai": 5, "template": 1}
    history = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Tony Allen"), timeout=10
    )
    assert history.total_generations == 5


async def test_one_bad_item_is_invalid_argument_naming_its_index_and_nothing_is_written(
    stub: Stub, clean_db: Database
) -> None:
    items = [request(), request(), request(cost=float("nan")), request(time_ms=-1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchRecordGenerations(_batch(*items), timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "generations[2].cost_usd" in (error.details() or "")
    fields = [field for field, _ in field_violations(error)]
    assert fields == ["generations[2].cost_usd", "generations[3].generation_time_ms"]
    assert await _count(clean_db) == 0


async def test_an_unknown_artist_is_not_found_naming_its_index_and_nothing_is_written(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Known")
    items = [request(artist="Known"), request(artist="Nobody Here"), request(artist="Known")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchRecordGenerations(_batch(*items), timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "generations[1].artist_name" in (error.details() or "")
    info = error_info(error)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"
    assert info.metadata["index"] == "1"
    assert await _count(clean_db) == 0
    stats = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert stats.total_generations == 0


@pytest.mark.parametrize("size", [0, 1001])
async def test_batch_size_is_bounded(stub: Stub, clean_db: Database, size: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchRecordGenerations(_batch(*[request()] * size), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "generations: must hold 1 to 1000 items" in (caught.value.details() or "")
    assert await _count(clean_db) == 0


async def test_a_full_batch_of_a_thousand_is_accepted(stub: Stub, clean_db: Database) -> None:
    reply = await stub.BatchRecordGenerations(_batch(*[request()] * 1000), timeout=30)
    assert len(reply.generations) == 1000
    assert await _count(clean_db) == 1000
