"""What may enter each tier: version-conditional fills, the Redis byte budget, the LRU bounds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from services.cache_gateway.codec import decode, encode
from services.cache_gateway.memory import Entry, MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from shared.embedded.redis import RedisServer
from tests.cache_gateway_support import profile, unique


@pytest.fixture
async def tier(redis_server: RedisServer) -> AsyncIterator[RedisTier]:
    opened = RedisTier(
        redis_server.url, prefix=unique("test:tier"), ttl_seconds=600, max_bytes=10**9, timeout=1
    )
    yield opened
    await opened.close()


def blob(name: str, version: int) -> bytes:
    message = profile(name, seed=version)
    message.version = version
    return encode(message, compress_above=1024)


async def test_a_fill_never_replaces_a_newer_copy_nor_goes_below_an_invalidation(
    tier: RedisTier,
) -> None:
    gen = await tier.recover(None, {}, bump=False)
    name = unique()

    first = await tier.fill(name, gen, 5, blob(name, 5), time.time())
    older = await tier.fill(name, gen, 4, blob(name, 4), time.time())
    await tier.invalidate(name, 7, "{}")
    # The classic race: a reader fetched version 6 before the save of 7 and fills late.
    late = await tier.fill(name, gen, 6, blob(name, 6), time.time())
    after_invalidation = await tier.get(name, gen)
    newest = await tier.fill(name, gen, 7, blob(name, 7), time.time())
    cached = await tier.get(name, gen)

    assert (first, older, late, newest) == (1, 0, 0, 1)
    assert after_invalidation is None
    assert cached is not None and cached[0] == 7 and decode(cached[1]).version == 7


async def test_a_fill_from_before_a_generation_change_is_refused(tier: RedisTier) -> None:
    gen = await tier.recover(None, {}, bump=False)
    moved = await tier.recover(gen, {}, bump=True)
    name = unique()

    stale = await tier.fill(name, gen, 3, blob(name, 3), time.time())

    assert moved == gen + 1
    assert stale == -1
    assert await tier.get(name, moved) is None


async def test_missed_invalidations_replayed_on_recovery_drop_older_copies(
    tier: RedisTier,
) -> None:
    gen = await tier.recover(None, {}, bump=False)
    name = unique()
    await tier.fill(name, gen, 3, blob(name, 3), time.time())

    same = await tier.recover(gen, {name: 4}, bump=False)
    refill = await tier.fill(name, gen, 3, blob(name, 3), time.time())

    assert same == gen
    assert await tier.get(name, gen) is None
    assert refill == 0


async def test_redis_entries_stay_under_the_byte_budget_evicting_the_least_read(
    redis_server: RedisServer,
) -> None:
    names = [unique(f"Budget{i}") for i in range(5)]
    size = len(blob(names[0], 1))
    tier = RedisTier(
        redis_server.url,
        prefix=unique("test:budget"),
        ttl_seconds=600,
        max_bytes=int(size * 3.5),
        timeout=1,
    )
    try:
        gen = await tier.recover(None, {}, bump=False)
        # Read counts 50, 40, 30, 20, 10: the first three are the most read.
        for i, name in enumerate(names):
            await tier.add_reads({name: 50 - 10 * i}, gen)
            await tier.fill(name, gen, 1, blob(name, 1), time.time())
        entries, used = await tier.usage(gen)
        cached = [name for name in names if await tier.get(name, gen) is not None]
        ranking = await tier.most_read(3)
    finally:
        await tier.close()

    assert used <= size * 3.5
    assert entries == 3
    assert cached == names[:3]
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
