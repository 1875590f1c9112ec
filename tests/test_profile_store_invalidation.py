"""Cache invalidation after saves and deletes: the gateway call, the outbox, the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from shared.embedded.ports import free_port
from shared.grpc.server import stop_server
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_env
from tests.profile_store_support import (
    RecordingGateway,
    Store,
    count,
    profile,
    running_store,
    start_gateway,
    unique,
)

OUTBOX = "SELECT count(*) FROM profile_invalidation_outbox WHERE artist_name = :n"


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url, cache_invalidation_timeout_ms=200) as opened:
        yield opened


@pytest.fixture
def gateway(store: Store) -> RecordingGateway:
    store.gateway.reset()
    return store.gateway


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
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    reply = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert reply.cache_invalidated
    [call] = gateway.calls_for(name)
    assert (call.version, call.deleted) == (reply.profile.version, False)
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
    sent = {c.artist_name: c.version for c in gateway.calls}
    assert {s.artist_name: s.version for s in reply.saved}.items() <= sent.items()
    sql = "SELECT count(*) FROM profile_invalidation_outbox WHERE artist_name = ANY(:n)"
    assert await count(store.db, sql, n=names) == 0


@pytest.mark.parametrize("code", [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE])
async def test_a_failing_gateway_never_fails_the_save_and_the_relay_delivers_later(
    store: Store, gateway: RecordingGateway, code: grpc.StatusCode
) -> None:
    name = unique()
    gateway.fail_with = code
    reply = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert not reply.cache_invalidated
    assert await _outbox(store, name) == [(reply.profile.version, False)]
    gateway.fail_with = None
    await _make_due(store)
    await store.parts.invalidator.relay_once()
    assert [c.version for c in gateway.calls_for(name)] == [reply.profile.version]
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
    gateway.fail_with = grpc.StatusCode.UNAVAILABLE
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    second = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    deleted = await store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    assert deleted.version > second.profile.version
    assert await _outbox(store, name) == [(deleted.version, True)]


async def test_the_relay_backs_off_while_the_gateway_keeps_failing(
    store: Store, gateway: RecordingGateway
) -> None:
    name = unique()
    gateway.fail_with = grpc.StatusCode.UNAVAILABLE
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    await _make_due(store)
    await store.parts.invalidator.relay_once()
    sql = (
        "SELECT count(*) FROM profile_invalidation_outbox"
        " WHERE artist_name = :n AND attempts = 1 AND next_attempt_at > now()"
    )
    assert await count(store.db, sql, n=name) == 1


async def test_a_store_process_delivers_invalidations_once_an_unreachable_gateway_starts(
    database_url: str,
) -> None:
    port = free_port()
    process = ServiceProcess(
        "profile_store",
        service_env(
            database_url,
            {
                "CACHE_GATEWAY_TARGET": f"127.0.0.1:{port}",
                "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS": "0.2",
                "PROFILE_STORE_OUTBOX_MAX_BACKOFF_SECONDS": "0.5",
            },
        ),
    ).start()
    recorder = RecordingGateway()  # type: ignore[abstract]
    gateway = None
    try:
        async with grpc.aio.insecure_channel(process.target) as channel:
            stub = pb_grpc.ProfileStoreServiceStub(channel)
            name = unique("Outage")
            reply = await stub.SaveStyleProfile(
                pb.SaveStyleProfileRequest(profile=profile(name)), timeout=10
            )
            assert not reply.cache_invalidated
            gateway = await start_gateway(recorder, port)
            for _ in range(300):
                if recorder.calls_for(name):
                    break
                await asyncio.sleep(0.1)
            assert [c.version for c in recorder.calls_for(name)] == [reply.profile.version]
    finally:
        process.stop()
        if gateway is not None:
            await stop_server(gateway, grace=0)
