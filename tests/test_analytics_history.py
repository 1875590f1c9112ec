"""GetArtistHistory over real gRPC and PostgreSQL: order, pages, totals, deleted artists."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shared.db.engine import Database
from shared.grpc.status import error_info, field_violations
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from tests.analytics_support import Stub, add_artist, analytics_server, delete_artist, request


@pytest.fixture(scope="module")
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with analytics_server(database_url) as client:
        yield client


async def _record(stub: Stub, artist: str, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        reply = await stub.RecordGeneration(request(artist=artist, time_ms=i), timeout=10)
        ids.append(reply.generation.id)
    return ids


async def _all_pages(stub: Stub, name: str, limit: int) -> list[pb.GetArtistHistoryResponse]:
    pages, token = [], ""
    while True:
        page = await stub.GetArtistHistory(
            pb.GetArtistHistoryRequest(artist_name=name, limit=limit, page_token=token),
            timeout=10,
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def _key(g: pb.Generation) -> tuple[int, str]:
    return (g.created_at.ToMicroseconds(), g.id)


async def test_history_is_newest_first_in_pages_with_the_artist_total(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Elvin Jones")
    await add_artist(clean_db, "Max Roach")
    ids = await _record(stub, "Elvin Jones", 23)
    await _record(stub, "Max Roach", 4)
    pages = await _all_pages(stub, "Elvin Jones", 5)
    assert [len(p.generations) for p in pages] == [5, 5, 5, 5, 3]
    assert all(p.total_generations == 23 for p in pages)
    seen = [g for p in pages for g in p.generations]
    assert [g.id for g in seen] == list(reversed(ids))
    assert [_key(g) for g in seen] == sorted((_key(g) for g in seen), reverse=True)
    assert {g.artist_name for g in seen} == {"Elvin Jones"}


async def test_history_limit_defaults_to_ten_and_refuses_out_of_range(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Art Blakey")
    await _record(stub, "Art Blakey", 12)
    first = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Art Blakey"), timeout=10
    )
    assert len(first.generations) == 10 and first.next_page_token
    full = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Art Blakey", limit=100), timeout=10
    )
    assert len(full.generations) == 12 and full.next_page_token == ""
    for limit in (-1, 101):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetArtistHistory(
                pb.GetArtistHistoryRequest(artist_name="Art Blakey", limit=limit), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == ["limit"]


async def test_history_of_an_artist_without_generations_is_empty(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Silent Drummer")
    reply = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Silent Drummer"), timeout=10
    )
    assert list(reply.generations) == [] and reply.total_generations == 0
    assert reply.next_page_token == ""


async def test_history_of_unknown_artist_is_not_found(stub: Stub, clean_db: Database) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetArtistHistory(pb.GetArtistHistoryRequest(artist_name="Ghost"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"


async def test_page_token_of_another_artist_or_garbage_is_invalid(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Buddy Rich")
    await add_artist(clean_db, "Gene Krupa")
    await _record(stub, "Buddy Rich", 3)
    first = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Buddy Rich", limit=1), timeout=10
    )
    for name, token in (("Gene Krupa", first.next_page_token), ("Buddy Rich", "not-a-token!")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetArtistHistory(
                pb.GetArtistHistoryRequest(artist_name=name, page_token=token), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == ["page_token"]


async def test_pages_stay_correct_while_new_generations_arrive(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Steve Gadd")
    before = set(await _record(stub, "Steve Gadd", 40))
    arriving = asyncio.create_task(_record(stub, "Steve Gadd", 60, start=1000))
    seen: list[pb.Generation] = []
    token = ""
    while True:
        page = await stub.GetArtistHistory(
            pb.GetArtistHistoryRequest(artist_name="Steve Gadd", limit=3, page_token=token),
            timeout=10,
        )
        seen.extend(page.generations)
        token = page.next_page_token
        await asyncio.sleep(0)
        if not token:
            break
    during = set(await arriving)
    ids = [g.id for g in seen]
    assert len(ids) == len(set(ids)), "a row was returned twice"
    assert before <= set(ids), "a row that existed before paging started was skipped"
    assert set(ids) <= before | during
    assert [_key(g) for g in seen] == sorted((_key(g) for g in seen), reverse=True)
    final = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Steve Gadd"), timeout=10
    )
    assert final.total_generations == 100


async def test_history_rows_survive_artist_deletion_and_a_new_artist_starts_afresh(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Ginger Baker")
    await _record(stub, "Ginger Baker", 6)
    await delete_artist(clean_db, "Ginger Baker")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetArtistHistory(
            pb.GetArtistHistoryRequest(artist_name="Ginger Baker"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    stats = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert stats.total_generations == 6

    await add_artist(clean_db, "Ginger Baker")
    await _record(stub, "Ginger Baker", 2)
    reply = await stub.GetArtistHistory(
        pb.GetArtistHistoryRequest(artist_name="Ginger Baker"), timeout=10
    )
    assert reply.total_generations == 2 and len(reply.generations) == 2
    assert (await stub.GetStats(pb.GetStatsRequest(), timeout=10)).total_generations == 8
