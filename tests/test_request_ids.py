"""Client request ids (AIP-155): a repeat is answered from the request log and writes nothing.

Real gRPC servers in this process over the session's PostgreSQL; the cut-after-commit
scenarios against real processes are in tests/faults/test_retry_after_commit.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from shared.db import idempotency
from shared.db.engine import Database
from shared.embedded.redis import RedisServer
from shared.grpc.status import field_violations
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.analytics_support import Stub, add_artist, analytics_server
from tests.analytics_support import request as generation_request
from tests.profile_store_support import Store, count, profile, rpc_error, running_store, unique


@pytest.fixture(scope="module")
async def store(database_url: str, redis_server: RedisServer) -> AsyncIterator[Store]:
    # With Redis, a recording gateway acknowledges the store's invalidations.
    async with running_store(
        database_url, redis_url=redis_server.url, redis_key_prefix="test:request-ids"
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
async def analytics(database_url: str) -> AsyncIterator[Stub]:
    async with analytics_server(database_url) as stub:
        yield stub


def _rid() -> str:
    return str(uuid.uuid4())


def _source_request(name: str, url: str, request_id: str) -> pb.AddResearchSourceRequest:
    return pb.AddResearchSourceRequest(
        artist_name=name,
        source=common_pb2.ResearchSource(source_type=common_pb2.SOURCE_TYPE_PAPER, url=url),
        request_id=request_id,
    )


async def test_a_repeated_request_id_returns_the_first_answer_and_writes_once(
    store: Store,
) -> None:
    name = unique("Repeat")
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    url = f"https://example.com/{uuid.uuid4()}"
    request = _source_request(name, url, _rid())
    first = await store.stub.AddResearchSource(request)
    second = await store.stub.AddResearchSource(request)
    assert second.SerializeToString() == first.SerializeToString()
    assert await count(store.db, "SELECT count(*) FROM research_sources WHERE url = :u", u=url) == 1
    # Without a request_id every call is a new write, as before.
    plain = _source_request(name, url, "")
    assert (await store.stub.AddResearchSource(plain)).source.id != first.source.id


async def test_get_or_create_repeat_keeps_created_true(store: Store) -> None:
    request = pb.GetOrCreateArtistRequest(name=unique("Created"), request_id=_rid())
    first = await store.stub.GetOrCreateArtist(request)
    again = await store.stub.GetOrCreateArtist(request)
    assert first.created and again.created
    assert again.SerializeToString() == first.SerializeToString()
    fresh = await store.stub.GetOrCreateArtist(
        pb.GetOrCreateArtistRequest(name=request.name, request_id=_rid())
    )
    assert not fresh.created and fresh.artist.id == first.artist.id


async def test_save_profile_repeat_is_not_aborted_by_its_own_save_and_keeps_the_ack(
    store: Store,
) -> None:
    name = unique("Versioned")
    request = pb.SaveStyleProfileRequest(
        profile=profile(name), expected_version=0, request_id=_rid()
    )
    first = await store.stub.SaveStyleProfile(request)
    assert first.cache_invalidated  # the recording gateway acknowledged
    again = await store.stub.SaveStyleProfile(request)
    assert again.SerializeToString() == first.SerializeToString()
    assert store.gateway is not None
    assert [c.version for c in store.gateway.calls_for(name)] == [first.profile.version]
    # The same save without the request_id is a new request: ABORTED, the profile exists.
    plain = pb.SaveStyleProfileRequest(profile=profile(name), expected_version=0)
    assert (await rpc_error(store.stub.SaveStyleProfile(plain))).code() == (grpc.StatusCode.ABORTED)


async def test_the_same_request_id_for_a_different_request_is_invalid_argument(
    store: Store, analytics: Stub
) -> None:
    name = unique("Mismatch")
    request_id = _rid()
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    await store.stub.AddResearchSource(_source_request(name, "https://example.com/a", request_id))
    error = await rpc_error(
        store.stub.AddResearchSource(_source_request(name, "https://example.com/b", request_id))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(error)] == ["request_id"]
    # Another RPC may use the same id: the log is keyed per RPC.
    other = generation_request()
    other.request_id = request_id
    assert (await analytics.RecordGeneration(other)).generation.id


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "naïve", "tab\there"])
async def test_a_malformed_request_id_is_refused(store: Store, bad: str) -> None:
    request = pb.GetOrCreateArtistRequest(name=unique("Bad"), request_id=bad)
    error = await rpc_error(store.stub.GetOrCreateArtist(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(error)] == ["request_id"]


async def test_concurrent_calls_with_one_request_id_write_once_and_agree(
    store: Store, analytics: Stub, db: Database
) -> None:
    name = unique("Concurrent")
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    url = f"https://example.com/{uuid.uuid4()}"
    source = _source_request(name, url, _rid())
    answers = await asyncio.gather(*(store.stub.AddResearchSource(source) for _ in range(12)))
    assert len({a.SerializeToString() for a in answers}) == 1
    assert await count(db, "SELECT count(*) FROM research_sources WHERE url = :u", u=url) == 1

    # RecordGeneration: the repeats may share one group-commit batch with the first.
    marker = f"out/{uuid.uuid4()}.mid"
    record = generation_request(files=(marker,))
    record.request_id = _rid()
    records = await asyncio.gather(*(analytics.RecordGeneration(record) for _ in range(12)))
    assert len({r.SerializeToString() for r in records}) == 1
    rows = await count(
        db,
        "SELECT count(*) FROM generation_history WHERE output_files ? :m",
        m=marker,
    )
    print(f"12 concurrent calls with one request_id: 1 source row, {rows} generation row(s)")
    assert rows == 1


async def test_batch_record_generations_repeat_and_item_request_ids(
    analytics: Stub, db: Database
) -> None:
    markers = [f"out/{uuid.uuid4()}.mid" for _ in range(3)]
    request = analytics_pb.BatchRecordGenerationsRequest(
        generations=[generation_request(files=(m,)) for m in markers], request_id=_rid()
    )
    first = await analytics.BatchRecordGenerations(request)
    again = await analytics.BatchRecordGenerations(request)
    assert again.SerializeToString() == first.SerializeToString()
    total = 0
    for marker in markers:
        total += await count(
            db, "SELECT count(*) FROM generation_history WHERE output_files ? :m", m=marker
        )
    assert total == 3
    request.generations[1].request_id = _rid()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await analytics.BatchRecordGenerations(request)
    assert [f for f, _ in field_violations(caught.value)] == ["generations[1].request_id"]


async def test_an_unknown_artist_leaves_the_request_id_free(analytics: Stub, db: Database) -> None:
    name = f"Later {uuid.uuid4()}"
    request = generation_request(artist=name)
    request.request_id = _rid()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await analytics.RecordGeneration(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await add_artist(db, name)
    assert (await analytics.RecordGeneration(request)).generation.artist_name == name


async def test_answers_older_than_a_day_are_pruned_and_their_ids_reusable(
    store: Store, db: Database
) -> None:
    name = unique("Expired")
    request = pb.GetOrCreateArtistRequest(name=name, request_id=_rid())
    first = await store.stub.GetOrCreateArtist(request)
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE request_log SET created_at = now() - interval '25 hours'"
                " WHERE request_id = :r"
            ),
            {"r": request.request_id},
        )
    # An expired answer is not replayed: the call runs again (and finds the artist).
    again = await store.stub.GetOrCreateArtist(request)
    assert first.created and not again.created
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE request_log SET created_at = now() - interval '25 hours'"
                " WHERE request_id = :r"
            ),
            {"r": request.request_id},
        )
    assert await idempotency.Pruner(db).prune_once() >= 1
    left = await count(
        db, "SELECT count(*) FROM request_log WHERE request_id = :r", r=request.request_id
    )
    assert left == 0
