"""Cache invalidation after saves and deletes: Redis and the gateways' acknowledgements, the
outbox, the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from sqlalchemy import text

from shared.cache.keys import Keys
from shared.embedded.redis import RedisServer
from shared.settings import RedisSettings
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_env
from tests.profile_store_support import (
    RecordingGateway,
    Store,
    count,
    profile,
    running_store,
    unique,
)

OUTBOX = "SELECT count(*) FROM profile_invalidation_outbox WHERE artist_name = :n"


PREFIX = "test:store-inv"


@pytest.fixture(scope="module")
async def store(database_url: str, redis_server: RedisServer) -> AsyncIterator[Store]:
    async with running_store(
        database_url,
        cache_invalidation_timeout_ms=500,
        redis_url=redis_server.url,
        redis_key_prefix=PREFIX,
    ) as opened:
        yield opened


@pytest.fixture
async def gateway(store: Store) -> RecordingGateway:
    assert store.gateway is not None and store.parts.invalidator.authority is not None
    store.gateway.reset()
    authority = store.parts.invalidator.authority
    for _ in range(100):
        if authority.listening:
            break
        await asyncio.sleep(0.05)
    return store.gateway


async def marker(redis_server: RedisServer, name: str) -> int:
    client = redis.Redis.from_url(redis_server.url)
    try:
        found: Any = await client.get(Keys(PREFIX).marker(name))
    finally:
        await client.aclose()
    return int(found or 0)


async def _outbox(store: Store, name: str) -> list[tuple[int, bool]]:
    async with store.db.transaction() as session:
        rows = await session.execute(
            text("SELECT version, deleted FROM profile_invalidation_outbox WHERE artist_name = :n"),
            {"n": name},
        )
        return [(r.version, r.deleted) for r in rows]


async def _make_due(store: Store) -> None:
    """Skip the relay's wait instead of sleeping through it."""
    async with store.db.transaction() as session:
        await session.execute(
            text("UPDATE profile_invalidation_outbox SET next_attempt_at = now()")
        )


async def test_save_invalidates_the_cached_copy_with_its_version(
    store: Store, gateway: RecordingGateway, redis_server: RedisServer
) -> None:
    name = unique()
    reply = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert reply.cache_invalidated
    [call] = gateway.calls_for(name)
    assert (call.version, call.deleted) == (reply.profile.version, False)
    assert await marker(redis_server, name) == reply.profile.version
    assert await count(store.db, OUTBOX, n=name) == 0


async def test_delete_invalidates_with_the_tombstone_version(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    deleted = await store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    last = gateway.calls_for(name)[-1]
    assert (last.version, last.deleted) == (deleted.version, True)
    assert await count(store.db, OUTBOX, n=name) == 0


async def test_batch_save_invalidates_every_artist_with_its_version(
    store: Store, gateway: RecordingGateway
) -> None:
    names = [unique("Batch") for _ in range(40)]
    reply = await store.stub.BatchSaveStyleProfiles(
        pb.BatchSaveStyleProfilesRequest(profiles=[profile(n) for n in names])
    )
    sent = {c.name: c.version for c in gateway.calls}
    assert {s.artist_name: s.version for s in reply.saved}.items() <= sent.items()
    sql = "SELECT count(*) FROM profile_invalidation_outbox WHERE artist_name = ANY(:n)"
    assert await count(store.db, sql, n=names) == 0


async def test_a_silent_gateway_never_fails_the_save_and_the_relay_delivers_later(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    gateway.silent = True
    reply = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert not reply.cache_invalidated
    assert await _outbox(store, name) == [(reply.profile.version, False)]
    gateway.silent = False
    await _make_due(store)
    await store.parts.invalidator.relay_once()
    assert [c.version for c in gateway.calls_for(name)] == [reply.profile.version] * 2
    assert await _outbox(store, name) == []


async def test_a_gateway_slower_than_the_deadline_leaves_the_row_for_the_relay(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    gateway.delay = 1.0
    reply = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert not reply.cache_invalidated
    assert await _outbox(store, name) == [(reply.profile.version, False)]


async def test_the_outbox_keeps_only_the_newest_invalidation_of_an_artist(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    gateway.silent = True
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    second = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    deleted = await store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    assert deleted.version > second.profile.version
    assert await _outbox(store, name) == [(deleted.version, True)]


async def test_the_relay_backs_off_while_the_gateway_keeps_failing(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    gateway.silent = True
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    await _make_due(store)
    await store.parts.invalidator.relay_once()
    sql = (
        "SELECT count(*) FROM profile_invalidation_outbox"
        " WHERE artist_name = :n AND attempts = 1 AND next_attempt_at > now()"
    )
    assert await count(store.db, sql, n=name) == 1


async def test_a_store_process_runs_invalidations_once_an_unreachable_redis_starts(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = RedisServer(tmp_path_factory.mktemp("late-redis"))
    process = ServiceProcess(
        "profile_store",
        service_env(
            database_url,
            {
                "REDIS_URL": server.url,
                "REDIS_KEY_PREFIX": PREFIX,
                "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS": "0.2",
                "PROFILE_STORE_OUTBOX_MAX_BACKOFF_SECONDS": "0.5",
            },
        ),
    ).start()
    recorder = None
    try:
        async with grpc.aio.insecure_channel(process.target) as channel:
            stub = pb_grpc.ProfileStoreServiceStub(channel)
            name = unique("Outage")
            reply = await stub.SaveStyleProfile(
                pb.SaveStyleProfileRequest(profile=profile(name)), timeout=10
            )
            assert not reply.cache_invalidated
            server.start()
            settings = RedisSettings(redis_url=server.url, redis_key_prefix=PREFIX)
            recorder = await RecordingGateway(settings).start()
            for _ in range(300):
                if await marker(server, name) == reply.profile.version:
                    break
                await asyncio.sleep(0.1)
            assert await marker(server, name) == reply.profile.version
            for _ in range(100):
                if recorder.calls_for(name):
                    break
                await asyncio.sleep(0.1)
            assert [c.version for c in recorder.calls_for(name)] == [reply.profile.version]
    finally:
        process.stop()
        if recorder is not None:
            await recorder.stop()
        server.stop()


async def test_without_redis_a_save_says_nothing_was_invalidated_and_leaves_no_row(
    database_url: str,
) -> None:
    async with running_store(database_url) as plain:
        name = unique()
        reply = await plain.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
        assert not reply.cache_invalidated
        assert await _outbox(plain, name) == []
