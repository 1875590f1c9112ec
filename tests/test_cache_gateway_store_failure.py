"""The store down: cached profiles are served marked stale, a miss is UNAVAILABLE quickly."""

from __future__ import annotations

import grpc
import pytest

from shared.embedded.redis import RedisServer
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from tests.cache_gateway_support import (
    Store,
    close_gateway,
    gateway_port,
    open_gateway,
    profile,
    redis_env,
    unique,
    until,
)


async def test_store_down_serves_cached_profiles_as_stale_and_misses_as_unavailable(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = gateway_port()
    prefix = unique("test:store")
    # Generous: a Redis call timing out on a loaded machine would hide Redis's copy.
    settings = {
        "redis_url": redis_server.url,
        "redis_key_prefix": prefix,
        "redis_timeout_seconds": 2,
    }
    extra = redis_env(redis_server.url, prefix)
    store = Store(database_url, tmp_path_factory.mktemp("store"), extra).start()
    gw = await open_gateway(port, store.process.target, **settings)
    other = await open_gateway(gateway_port(), store.process.target, **settings)
    try:
        name = unique()
        version = await store.save(profile(name))
        fresh = await gw.get(name)
        await store.close()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.get(unique("Uncached"))
        from_memory = await gw.get(name)
        # The other replica has only Redis's copy; it learns the store is down by probing.
        await until(lambda: not other.gateway.store_reachable)
        from_redis = await other.get(name)
        stats = await gw.stats()
    finally:
        await close_gateway(other)
        await close_gateway(gw)

    assert not fresh.stale
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (from_memory.served_from, from_memory.stale) == (pb.SERVED_FROM_IN_PROCESS, True)
    assert (from_redis.served_from, from_redis.stale) == (pb.SERVED_FROM_REDIS, True)
    assert from_memory.profile.version == from_redis.profile.version == version
    assert stats.errors["store_unavailable"] >= 1
