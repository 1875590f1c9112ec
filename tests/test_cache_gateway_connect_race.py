"""A Redis failure seen by a request while the gateway's monitor is reconnecting: the
attempt must not count as a connection (real redis-server; the failure is the one a read
reports when a cluster node drops it mid-restart)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.cache_gateway import coherence
from services.cache_gateway.coherence import RedisLink
from services.cache_gateway.config import Settings
from services.cache_gateway.memory import MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from services.cache_gateway.stats import Stats
from shared.embedded.redis import RedisServer


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[tuple[RedisLink, list[bool]]]:
    settings = Settings(redis_url=redis_server.url, redis_key_prefix="test:race")
    tier = RedisTier(settings)
    states: list[bool] = []

    async def on_state(up: bool) -> None:
        states.append(up)

    async def on_recovered() -> None:
        return None

    made = RedisLink(
        tier,
        MemoryTier(max_entries=100, max_bytes=1 << 20),
        Stats(),
        settings,
        breaker_seconds=0.1,
        on_state=on_state,
        on_recovered=on_recovered,
    )
    yield made, states
    await made._stop_listener()
    await tier.close()


async def test_a_failure_during_the_connect_is_not_reported_as_connected(
    link: tuple[RedisLink, list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_link, states = link

    async def fails_meanwhile(client: Any) -> None:
        # Between subscribing and registering: a read elsewhere lost its connection.
        redis_link.fail(RedisConnectionError("Connection closed by server."))

    monkeypatch.setattr(coherence, "warn_if_markers_evictable", fails_meanwhile)
    await redis_link._step()
    assert not redis_link.up and not redis_link.coherent
    # Health must not say SERVING for a link the gateway itself just gave up on.
    assert True not in states, states

    monkeypatch.undo()
    await redis_link._step()
    assert redis_link.up and states == [True]
