"""Single-flight: concurrent misses for one artist make one store call between them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shared.embedded.redis import RedisServer
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
) -> AsyncIterator[tuple[Store, GatewayUnderTest]]:
    port = gateway_port()
    prefix = unique("test:flight")
    extra = redis_env(redis_server.url, prefix)
    store = Store(database_url, tmp_path_factory.mktemp("store"), extra).start()
    gw = await open_gateway(
        port, store.process.target, redis_url=redis_server.url, redis_key_prefix=prefix
    )
    yield store, gw
    await close_gateway(gw)
    await store.close()


async def test_hundred_concurrent_misses_make_exactly_one_store_call(
    stack: tuple[Store, GatewayUnderTest],
) -> None:
    store, gw = stack
    name = unique()
    version = await store.save(profile(name))
    before = await gw.stats()

    replies = await asyncio.gather(*(gw.get(name) for _ in range(100)))
    after = await gw.stats()

    assert {r.profile.version for r in replies} == {version}
    assert after.store_fetches - before.store_fetches == 1
    # Calls that arrived after the fill were plain hits; the others joined the one lookup.
    merged = after.single_flight_merges - before.single_flight_merges
    hits = after.in_process.hits - before.in_process.hits
    assert merged >= 1 and merged + hits == 99


async def test_concurrent_misses_for_an_unknown_artist_share_one_not_found(
    stack: tuple[Store, GatewayUnderTest],
) -> None:
    _, gw = stack
    name = unique("Nobody")
    before = await gw.stats()

    outcomes = await asyncio.gather(*(gw.get(name) for _ in range(50)), return_exceptions=True)
    after = await gw.stats()

    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    codes = {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.NOT_FOUND}
    assert after.store_fetches - before.store_fetches == 1
