"""The read path and provenance: in-process tier → Redis → store, against a real store process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from shared.cache.keys import Keys
from shared.embedded.redis import RedisServer
from shared.grpc.status import error_info
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from tests.cache_gateway_support import (
    GatewayUnderTest,
    Store,
    close_gateway,
    gateway_port,
    open_gateway,
    profile,
    redis_env,
    unique,
)

TTL = 3600
PREFIX = "test:read"
KEYS = Keys(PREFIX)


@pytest.fixture(scope="module")
def port() -> int:
    return gateway_port()


@pytest.fixture(scope="module")
def store(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    extra = redis_env(redis_server.url, PREFIX)
    opened = Store(database_url, tmp_path_factory.mktemp("store"), extra).start()
    yield opened
    opened.process.stop()


@pytest.fixture(scope="module")
async def gw(port: int, store: Store, redis_server: RedisServer) -> AsyncIterator[GatewayUnderTest]:
    opened = await open_gateway(
        port,
        store.process.target,
        redis_url=redis_server.url,
        redis_ttl_seconds=TTL,
        redis_key_prefix=PREFIX,
    )
    yield opened
    await close_gateway(opened)
    await store.close()


@pytest.fixture(scope="module")
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def entry(raw: redis.Redis, name: str) -> dict[bytes, bytes]:
    found: Any = await raw.hgetall(KEYS.entry(name))
    return dict(found)


async def test_reads_come_from_the_store_then_memory_then_redis_with_provenance(
    gw: GatewayUnderTest, store: Store, redis_server: RedisServer, raw: redis.Redis
) -> None:
    name = unique()
    version = await store.save(profile(name))

    first = await gw.get(name)
    second = await gw.get(name)
    # Another replica over the same Redis has nothing in memory: Redis answers it.
    other = await open_gateway(
        gateway_port(), store.process.target, redis_url=redis_server.url, redis_key_prefix=PREFIX
    )
    try:
        third = await other.get(name)
    finally:
        await close_gateway(other)

    assert [r.served_from for r in (first, second, third)] == [
        pb.SERVED_FROM_STORE,
        pb.SERVED_FROM_IN_PROCESS,
        pb.SERVED_FROM_REDIS,
    ]
    assert {r.profile.version for r in (first, second, third)} == {version}
    assert third.profile == first.profile
    assert not any(r.stale for r in (first, second, third))
    assert second.age.ToNanoseconds() >= first.age.ToNanoseconds() >= 0


async def test_redis_entries_carry_the_configured_ttl(
    gw: GatewayUnderTest, store: Store, raw: redis.Redis
) -> None:
    name = unique()
    await store.save(profile(name))
    await gw.get(name)

    ttl = await raw.ttl(KEYS.entry(name))

    assert TTL - 60 < ttl <= TTL


async def test_large_profiles_are_compressed_in_redis_and_small_ones_are_not(
    gw: GatewayUnderTest, store: Store, raw: redis.Redis
) -> None:
    large, small = unique("Large"), unique("Small")
    await store.save(profile(large, text="ghost notes on the snare, " * 600))
    small_profile = profile(small)
    small_profile.ClearField("embedding")
    await store.save(small_profile)

    served_large = await gw.get(large)
    served_small = await gw.get(small)
    stored_large, stored_small = await entry(raw, large), await entry(raw, small)

    assert stored_large[b"d"][:1] == b"\x01"
    assert len(stored_large[b"d"]) < served_large.profile.ByteSize() // 4
    assert stored_small[b"d"] == b"\x00" + served_small.profile.SerializeToString()


async def test_save_profile_invalidates_both_cache_tiers(
    gw: GatewayUnderTest, store: Store, raw: redis.Redis
) -> None:
    name = unique()
    old = await store.save(profile(name, seed=1))
    await gw.get(name)
    await gw.get(name)

    new = await store.save(profile(name, seed=2))
    stored = await entry(raw, name)
    marker: Any = await raw.get(KEYS.marker(name))
    read = await gw.get(name)

    assert new > old
    assert int(marker) == new and stored == {}
    assert read.profile.version == new
    assert read.served_from == pb.SERVED_FROM_STORE


async def test_unknown_artist_is_not_found_cached_briefly_and_dropped_on_creation(
    gw: GatewayUnderTest, store: Store
) -> None:
    name = unique("Nobody")
    errors = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.get(name)
        errors.append(caught.value)
    before = await gw.stats()

    version = await store.save(profile(name))
    created = await gw.get(name)

    assert [e.code() for e in errors] == [grpc.StatusCode.NOT_FOUND] * 2
    assert [error_info(e).reason for e in errors] == ["ARTIST_NOT_FOUND"] * 2  # type: ignore[union-attr]
    assert before.negative_hits >= 1
    assert created.profile.version == version


async def test_deleted_artist_is_not_found_on_the_next_read(
    gw: GatewayUnderTest, store: Store
) -> None:
    name = unique()
    await store.save(profile(name))
    await gw.get(name)

    await store.delete(name)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.get(name)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_min_version_is_never_answered_below_even_by_a_replica_that_missed_the_save(
    gw: GatewayUnderTest, store: Store, tmp_path: Path
) -> None:
    # A gateway without Redis hears no invalidation (it keeps copies for the degraded TTL).
    lonely = await open_gateway(gateway_port(), store.process.target)
    try:
        name = unique()
        await store.save(profile(name, seed=1))
        cached = await lonely.get(name)
        newer = await store.save(profile(name, seed=2))

        without_token = await lonely.get(name)
        with_token = await lonely.get(name, min_version=newer)
        stats = await lonely.stats()
    finally:
        await close_gateway(lonely)

    assert without_token.profile.version == cached.profile.version < newer
    assert without_token.served_from == pb.SERVED_FROM_IN_PROCESS
    assert with_token.profile.version == newer
    assert with_token.served_from == pb.SERVED_FROM_STORE
    assert not stats.redis_configured and not stats.redis_reachable


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GetStyleProfileRequest(artist_name="  "), "artist_name"),
        (pb.GetStyleProfileRequest(artist_name="x", min_version=-1), "min_version"),
    ],
)
async def test_bad_reads_are_invalid_argument_naming_the_field(
    gw: GatewayUnderTest, request_: pb.GetStyleProfileRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.GetStyleProfile(request_, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_invalidation_is_not_part_of_the_gateways_public_surface(
    gw: GatewayUnderTest,
) -> None:
    # Once any client could raise a floor to 2^62 and make an artist unreadable.
    method = "/stylebase.cache_gateway.v1.CacheGatewayService/InvalidateProfile"
    call = gw.channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=5)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
