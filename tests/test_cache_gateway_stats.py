"""GetCacheStats counts per tier, and WarmCache loads the named or most-read profiles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from shared.embedded.redis import RedisServer
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


@pytest.fixture(scope="module")
async def stack(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Store, GatewayUnderTest, str]]:
    port = gateway_port()
    prefix = unique("test:stats")
    extra = redis_env(redis_server.url, prefix)
    store = Store(database_url, tmp_path_factory.mktemp("store"), extra).start()
    gw = await open_gateway(
        port, store.process.target, redis_url=redis_server.url, redis_key_prefix=prefix
    )
    yield store, gw, prefix
    await close_gateway(gw)
    await store.close()


async def test_stats_count_hits_and_misses_per_tier_with_entries_and_bytes(
    stack: tuple[Store, GatewayUnderTest, str], redis_server: RedisServer
) -> None:
    store, gw, prefix = stack
    name, missing = unique(), unique("Nobody")
    await store.save(profile(name))
    before = await gw.stats()

    await gw.get(name)  # memory miss, Redis miss, store
    await gw.get(name)  # memory hit
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.get(missing)  # a miss to the store, then a negative hit
    replica = await open_gateway(
        gateway_port(), store.process.target, redis_url=redis_server.url, redis_key_prefix=prefix
    )
    try:
        await replica.get(name)  # Redis hit on a fresh replica
        replica_stats = await replica.stats()
    finally:
        await close_gateway(replica)
    after = await gw.stats()

    def delta(field: str, tier: str) -> int:
        return int(getattr(getattr(after, tier), field) - getattr(getattr(before, tier), field))

    assert (delta("hits", "in_process"), delta("misses", "in_process")) == (1, 2)
    assert (delta("hits", "redis"), delta("misses", "redis")) == (0, 2)
    assert after.store_fetches - before.store_fetches == 2
    assert after.negative_hits - before.negative_hits == 1
    assert after.in_process.entries >= 1 and after.in_process.bytes > 0
    assert after.redis.entries >= 1 and after.redis.bytes > 0
    assert after.redis_configured and after.redis_reachable
    assert 0 < after.hit_rate < 1
    assert after.in_process.hit_rate == pytest.approx(
        after.in_process.hits / (after.in_process.hits + after.in_process.misses)
    )
    assert (replica_stats.redis.hits, replica_stats.redis.misses) == (1, 0)
    assert replica_stats.redis.hit_rate == 1.0


async def test_warm_cache_loads_named_artists_and_counts_the_unknown(
    stack: tuple[Store, GatewayUnderTest, str],
) -> None:
    store, gw, _ = stack
    names = [unique() for _ in range(3)]
    for name in names:
        await store.save(profile(name))

    reply = await gw.stub.WarmCache(
        pb.WarmCacheRequest(artist_names=[*names, unique("Nobody")]), timeout=10
    )
    reads = [await gw.get(name) for name in names]

    assert (reply.warmed, reply.not_found, reply.failed) == (3, 1, 0)
    assert {r.served_from for r in reads} == {pb.SERVED_FROM_IN_PROCESS}


async def test_warm_cache_refuses_a_negative_top_n(
    stack: tuple[Store, GatewayUnderTest, str],
) -> None:
    _, gw, _ = stack
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.WarmCache(pb.WarmCacheRequest(top_n=-1), timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_n" in (caught.value.details() or "")
