"""Saves answered cache_invalidated=false while the store could not reach Redis stay bounded.

The store's outbox relay backs off while Redis is down (up to a minute); once the store hears
Redis again it must deliver what it holds at once, not when that backoff runs out. Real
profile store process, real redis-server stopped and started on its port, the test PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from sqlalchemy import text

from shared.cache.keys import Keys
from shared.db.engine import Database
from shared.embedded.redis import RedisServer
from tests.cache_gateway_support import Store, profile, unique

PREFIX = "test:outbox-outage"
_ROW = text(
    "SELECT attempts, next_attempt_at, now() AS now FROM profile_invalidation_outbox "
    "WHERE artist_name = :n"
)


@pytest.fixture
async def redis_down_and_up(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _row(db: Database, name: str) -> tuple[int, float, float] | None:
    async with db.transaction() as session:
        row = (await session.execute(_ROW, {"n": name})).first()
    if row is None:
        return None
    return int(row.attempts), row.next_attempt_at.timestamp(), row.now.timestamp()


async def test_outbox_is_delivered_as_soon_as_the_store_hears_redis_again(
    database_url: str, db: Database, redis_down_and_up: RedisServer, tmp_path: Path
) -> None:
    server = redis_down_and_up
    store = Store(
        database_url,
        tmp_path,
        {
            "REDIS_URL": server.url,
            "REDIS_KEY_PREFIX": PREFIX,
            "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS": "0.25",
            "PROFILE_STORE_OUTBOX_MAX_BACKOFF_SECONDS": "60",
            "LOG_LEVEL": "INFO",
        },
    ).start()
    name = unique("Outage")
    try:
        await store.save(profile(name, seed=1))
        server.stop()
        reply = await store.save_reply(profile(name, seed=2))
        version = reply.profile.version
        assert not reply.cache_invalidated
        # Let the relay fail often enough that its backoff outgrows the outage.
        deadline = time.monotonic() + 60
        while True:
            row = await _row(db, name)
            assert row is not None, "the outbox lost an unconfirmed invalidation"
            attempts, next_at, now = row
            if attempts >= 6 and next_at - now > 3:
                break
            assert time.monotonic() < deadline, f"relay made only {attempts} attempts"
            await asyncio.sleep(0.2)
        postponed_until = next_at
        server.start()
        delivered_at = None
        deadline = time.monotonic() + 60
        while delivered_at is None:
            await asyncio.sleep(0.1)
            row = await _row(db, name)
            if row is None:
                async with db.transaction() as session:
                    delivered_at = (await session.execute(text("SELECT now()"))).scalar_one()
            assert time.monotonic() < deadline, "the outbox never drained"
        client = redis.Redis.from_url(server.url)
        try:
            marker = await client.get(Keys(PREFIX).marker(name))
        finally:
            await client.aclose()
        early = postponed_until - delivered_at.timestamp()
        print(
            f"\n[outbox after outage] attempts {attempts}, delivered {early:.1f} s before the "
            f"relay's backoff would have retried; marker {marker!r}, version {version}"
        )
        assert marker is not None and int(marker) == version
        assert delivered_at.timestamp() < postponed_until, (
            "the relay waited out its backoff although Redis was back"
        )
    finally:
        await store.close()
