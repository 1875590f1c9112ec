"""RecordGeneration over real gRPC and PostgreSQL: what is stored, what is refused."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.grpc.status import error_info, field_violations
from shared.metrics import GENERATION_HISTORY_SAVES
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from tests.analytics_support import Stub, add_artist, analytics_server, request


@pytest.fixture(scope="module")
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with analytics_server(database_url) as client:
        yield client


async def _history_count(db: Database) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(text("SELECT count(*) FROM generation_history")) or 0)


async def test_record_generation_stores_the_row_and_returns_it(
    stub: Stub, clean_db: Database
) -> None:
    artist_id = await add_artist(clean_db, "Tony Allen")
    reply = await stub.RecordGeneration(
        request(artist="  Tony Allen ", provider="openai", time_ms=2500, tokens=900, cost=0.25),
        timeout=10,
    )
    g = reply.generation
    assert uuid.UUID(g.id).version == 7
    assert (g.artist_id, g.artist_name, g.provider_used) == (str(artist_id), "Tony Allen", "openai")
    assert (g.generation_time_ms, g.tokens_used, g.cost_usd) == (2500, 900, 0.25)
    assert g.user_params.time_signature == "4/4"
    assert list(g.output_files) == ["out/pattern.mid"]
    async with clean_db.transaction() as session:
        row = (
            await session.execute(
                text("SELECT * FROM generation_history WHERE id = :id"), {"id": uuid.UUID(g.id)}
            )
        ).one()
    assert row.artist_id == artist_id
    assert row.user_params == {"bars": 8, "tempo": 120.0, "time_signature": "4/4", "variations": 2}
    assert row.output_files == ["out/pattern.mid"]
    assert g.created_at.ToDatetime().replace(tzinfo=row.created_at.tzinfo) == row.created_at


async def test_record_generation_without_artist_is_allowed(stub: Stub, clean_db: Database) -> None:
    reply = await stub.RecordGeneration(request(provider="my-local_model2"), timeout=10)
    assert reply.generation.artist_id == ""
    assert await _history_count(clean_db) == 1


async def test_record_generation_for_unknown_artist_is_not_found_and_writes_nothing(
    stub: Stub, clean_db: Database
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordGeneration(request(artist="Nobody Known"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"
    assert await _history_count(clean_db) == 0


def _invalid(**changes: object) -> pb.RecordGenerationRequest:
    message = request()
    for path, value in changes.items():
        target = message.user_params if path.startswith("up_") else message
        name = path.removeprefix("up_")
        if isinstance(value, list):
            del getattr(target, name)[:]
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return message


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (_invalid(provider_used=""), "provider_used"),
        (_invalid(provider_used="OpenAI"), "provider_used"),
        (_invalid(provider_used="x" * 51), "provider_used"),
        (_invalid(provider_used="open ai"), "provider_used"),
        (_invalid(generation_time_ms=-1), "generation_time_ms"),
        (_invalid(tokens_used=-5), "tokens_used"),
        (_invalid(cost_usd=-0.01), "cost_usd"),
        (_invalid(cost_usd=math.inf), "cost_usd"),
        (_invalid(cost_usd=math.nan), "cost_usd"),
        (_invalid(up_bars=0), "user_params.bars"),
        (_invalid(up_bars=65), "user_params.bars"),
        (_invalid(up_tempo=19.9), "user_params.tempo"),
        (_invalid(up_tempo=400.5), "user_params.tempo"),
        (_invalid(up_tempo=math.nan), "user_params.tempo"),
        (_invalid(up_time_signature="4-4"), "user_params.time_signature"),
        (_invalid(up_time_signature="4/3"), "user_params.time_signature"),
        (_invalid(up_time_signature=""), "user_params.time_signature"),
        (_invalid(up_variations=17), "user_params.variations"),
        (_invalid(output_files=["a.mid"] * 65), "output_files"),
        (_invalid(output_files=["ok.mid", ""]), "output_files[1]"),
        (_invalid(output_files=["x" * 1025]), "output_files[0]"),
        (_invalid(output_files=["bad\x00.mid"]), "output_files[0]"),
        (_invalid(artist_name="   "), "artist_name"),
        (_invalid(artist_name="x" * 256), "artist_name"),
        (pb.RecordGenerationRequest(provider_used="google"), "user_params"),
    ],
)
async def test_record_generation_refuses_invalid_fields_by_name(
    stub: Stub, clean_db: Database, message: pb.RecordGenerationRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordGeneration(message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in field_violations(caught.value)]
    assert await _history_count(clean_db) == 0


async def test_record_generation_reports_every_violation_at_once(stub: Stub) -> None:
    message = _invalid(provider_used="", generation_time_ms=-1, up_bars=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordGeneration(message, timeout=10)
    fields = {f for f, _ in field_violations(caught.value)}
    assert {"provider_used", "generation_time_ms", "user_params.bars"} <= fields


async def test_record_generation_accepts_the_edges_of_every_range(
    stub: Stub, clean_db: Database
) -> None:
    message = _invalid(
        provider_used="template",
        generation_time_ms=0,
        tokens_used=0,
        cost_usd=0.0,
        up_bars=64,
        up_tempo=20.0,
        up_time_signature="32/32",
        up_variations=16,
        output_files=["x" * 1024] * 64,
    )
    reply = await stub.RecordGeneration(message, timeout=10)
    assert reply.generation.user_params.bars == 64
    assert await _history_count(clean_db) == 1


async def test_concurrent_records_each_get_their_own_row_and_counter_increment(
    stub: Stub, clean_db: Database
) -> None:
    await add_artist(clean_db, "Clyde Stubblefield")
    before = GENERATION_HISTORY_SAVES._value.get()
    calls = [
        stub.RecordGeneration(
            request(artist="Clyde Stubblefield" if i % 3 else "Unknown Drummer", time_ms=i),
            timeout=20,
        )
        for i in range(120)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if isinstance(r, pb.RecordGenerationResponse)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 80 and len(failed) == 40
    assert all(e.code() == grpc.StatusCode.NOT_FOUND for e in failed)
    assert len({r.generation.id for r in ok}) == 80
    assert sorted(r.generation.generation_time_ms for r in ok) == [i for i in range(120) if i % 3]
    assert await _history_count(clean_db) == 80
    assert GENERATION_HISTORY_SAVES._value.get() - before == 80
