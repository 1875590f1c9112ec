"""What may enter each tier: version-conditional fills, markers that outlive entries, one
hash slot per artist, a bounded read ranking, the LRU bounds."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from services.cache_gateway.codec import decode, encode
from services.cache_gateway.memory import Entry, MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from shared.cache.authority import Authority
from shared.cache.client import warn_if_markers_evictable
from shared.cache.keys import Keys
from shared.cache.protocol import Drop
from shared.embedded.redis import RedisServer
from shared.settings import RedisSettings
from tests.cache_gateway_support import profile, unique


def redis_settings(url: str) -> RedisSettings:
    prefix = unique("test:tier").replace(" ", "-")
    return RedisSettings(redis_url=url, redis_key_prefix=prefix, redis_timeout_seconds=1)


@pytest.fixture
async def redis_config(redis_server: RedisServer) -> RedisSettings:
    return redis_settings(redis_server.url)


@pytest.fixture
async def tier(redis_config: RedisSettings) -> AsyncIterator[RedisTier]:
    opened = RedisTier(redis_config, max_ranked=3)
    yield opened
    await opened.close()


@pytest.fixture
async def authority(redis_config: RedisSettings) -> AsyncIterator[Authority]:
    opened = Authority(redis_config)
    yield opened
    await opened.close()


def blob(name: str, version: int) -> bytes:
    message = profile(name, seed=version)
    message.version = version
    return encode(message, compress_above=1024)


async def test_a_fill_never_replaces_a_newer_copy_nor_goes_below_an_invalidation(
    tier: RedisTier, authority: Authority
) -> None:
    name = unique()

    first = await tier.fill(name, 5, blob(name, 5), time.time())
    older = await tier.fill(name, 4, blob(name, 4), time.time())
    await authority.drop([Drop(name, 7)])
    # The classic race: a reader fetched version 6 before the save of 7 and fills late.
    late = await tier.fill(name, 6, blob(name, 6), time.time())
    after_invalidation = await tier.get(name)
    newest = await tier.fill(name, 7, blob(name, 7), time.time())
    cached = await tier.get(name)
    # Running an invalidation again (the outbox relay) changes nothing.
    await authority.drop([Drop(name, 7)])

    assert (first, older, late, newest) == (1, 0, 0, 1)
    assert after_invalidation is None
    assert cached is not None and cached[0] == 7 and decode(cached[1]).version == 7
    assert await tier.get(name) == cached


async def test_markers_carry_no_ttl_so_volatile_lru_evicts_only_entries(
    tier: RedisTier, authority: Authority, redis_config: RedisSettings
) -> None:
    name = unique()
    await tier.fill(name, 3, blob(name, 3), time.time())
    await authority.drop([Drop(name, 4)])
    await tier.fill(name, 4, blob(name, 4), time.time())
    raw: Any = Redis.from_url(str(redis_config.redis_url), decode_responses=True)
    try:
        marker_ttl = await raw.ttl(tier.keys.marker(name))
        entry_ttl = await raw.ttl(tier.keys.entry(name))
        policy = await raw.config_get("maxmemory-policy")
    finally:
        await raw.aclose()

    assert marker_ttl == -1
    assert 0 < entry_ttl <= redis_config.redis_ttl_seconds
    assert policy == {"maxmemory-policy": "volatile-lru"}


def test_every_key_of_an_artist_shares_one_hash_slot_whatever_the_name() -> None:
    keys = Keys("stylebase:cg")
    for name in ["Questlove", "{odd}", "}{", "a{b}c", "Ünïcode ドラム", "x" * 300]:
        slots = {key_slot(key.encode()) for key in keys.artist(name)}
        assert len(slots) == 1, name
    assert keys.marker("a") != keys.marker("b") and keys.entry("a") != keys.marker("a")


def test_a_key_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="redis_key_prefix"):
        RedisSettings(redis_key_prefix="stylebase:{cg}")


async def test_the_read_ranking_keeps_only_the_most_read_up_to_its_cap(tier: RedisTier) -> None:
    names = [unique(f"Ranked{i}") for i in range(5)]
    # Read counts 50, 40, 30, 20, 10: the first three are the most read.
    for i, name in enumerate(names):
        await tier.add_reads({name: 50 - 10 * i})

    ranking = await tier.most_read(10)

    assert ranking == names[:3]


def entry(version: int, size: int = 100, fresh_as_of: float = 0.0) -> Entry:
    return Entry(profile("x", seed=version), version, time.time(), fresh_as_of, size)


def test_in_process_tier_is_bounded_by_entries_and_by_bytes_least_recent_out() -> None:
    memory = MemoryTier(max_entries=3, max_bytes=250)
    for name in "abc":
        memory.put(name, entry(1, size=80), memory.epoch)
    memory.get("a", 0, now=0.0, max_age=60)
    memory.put("d", entry(1, size=80), memory.epoch)

    assert list(memory.entries) == ["c", "a", "d"]
    assert memory.bytes == 240

    memory.put("e", entry(1, size=200), memory.epoch)

    assert list(memory.entries) == ["e"]
    assert memory.bytes == 200


def test_in_process_fill_is_refused_below_the_floor_or_after_a_flush() -> None:
    memory = MemoryTier(max_entries=10, max_bytes=10_000)
    epoch = memory.epoch
    memory.raise_floor("a", 5)
    refused_old = memory.put("a", entry(4), epoch)
    memory.clear()
    refused_flushed = memory.put("b", entry(9), epoch)
    accepted = memory.put("a", entry(5), memory.epoch)

    assert (refused_old, refused_flushed, accepted) == (False, False, True)
    assert memory.get("a", 0, now=0.0, max_age=60) is not None
    assert memory.get("a", 6, now=0.0, max_age=60) is None


def test_a_malformed_cluster_address_map_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port=host:port"):
        RedisSettings(redis_cluster_address_map="10.0.0.1:7000=proxy")
    mapped = RedisSettings(redis_cluster_address_map="10.0.0.1:7000=proxy:17000, a:1=b:2")

    assert mapped.redis_cluster_addresses() == {
        ("10.0.0.1", 7000): ("proxy", 17000),
        ("a", 1): ("b", 2),
    }


async def test_a_redis_that_may_evict_markers_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path, extra_args=["--maxmemory-policy", "allkeys-lru"])
    server.start()
    client = Redis.from_url(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="shared.cache.client"):
            await warn_if_markers_evictable(client)
    finally:
        await client.aclose()
        server.stop()

    assert "allkeys-lru" in caplog.text and "volatile-lru" in caplog.text
