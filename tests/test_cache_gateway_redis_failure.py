"""Redis down, silent or restarted: reads go on, health says so, the breaker holds, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from services.cache_gateway.app import REDIS_HEALTH_NAME
from shared.cache.keys import Keys
from shared.embedded.redis import RedisServer
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from tests.cache_gateway_support import (
    SERVING,
    GatewayUnderTest,
    Store,
    close_gateway,
    gateway_port,
    open_gateway,
    profile,
    redis_env,
    unique,
    until,
)
from tests.harness import ServiceProcess, service_env, wait_serving
from tests.profile_store_support import unused_target

PREFIX = "test:failure"
KEYS = Keys(PREFIX)
REDIS_ERRORS = ("redis_connection", "redis_timeout", "redis_error")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis-failure"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def port() -> int:
    return gateway_port()


@pytest.fixture(scope="module")
def store(
    database_url: str, server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    extra = {**redis_env(server.url, PREFIX), "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS": "0.2"}
    opened = Store(database_url, tmp_path_factory.mktemp("store"), extra).start()
    yield opened
    opened.process.stop()


@pytest.fixture(scope="module")
async def gw(port: int, store: Store, server: RedisServer) -> AsyncIterator[GatewayUnderTest]:
    opened = await open_gateway(
        port,
        store.process.target,
        redis_url=server.url,
        redis_key_prefix=PREFIX,
        redis_breaker_seconds=0.2,
    )
    yield opened
    await close_gateway(opened)
    await store.close()


@pytest.fixture
async def restart_after(server: RedisServer, gw: GatewayUnderTest) -> AsyncIterator[None]:
    """Whatever a test does to Redis, the next one finds it up and the gateway on it."""
    yield
    if server._proc is not None:
        os.kill(server._proc.pid, signal.SIGCONT)
    if not server.running:
        server.start()
    await until(gw.redis_up)


def redis_errors(stats: pb.GetCacheStatsResponse) -> int:
    return sum(stats.errors.get(kind, 0) for kind in REDIS_ERRORS)


@pytest.mark.usefixtures("restart_after")
async def test_reads_keep_succeeding_while_redis_is_down_and_health_reports_it(
    gw: GatewayUnderTest, store: Store, server: RedisServer
) -> None:
    cached, later = unique(), [unique() for _ in range(10)]
    cached_version = await store.save(profile(cached))
    await gw.get(cached)

    server.stop()
    await until(gw.redis_down)
    versions = {name: await store.save(profile(name)) for name in later}
    tripped = await gw.stats()
    reads = [await gw.get(name) for name in later]
    again = await gw.get(cached)
    after = await gw.stats()

    assert await gw.health("") == SERVING
    assert [r.profile.version for r in reads] == [versions[n] for n in later]
    assert {r.served_from for r in reads} == {pb.SERVED_FROM_STORE}
    assert again.profile.version == cached_version and not again.stale
    assert not after.redis_reachable and after.redis_configured
    assert redis_errors(tripped) >= 1
    # The breaker kept every one of those reads away from the dead Redis.
    assert redis_errors(after) == redis_errors(tripped)

    server.start()
    await until(gw.redis_up)
    assert (await gw.stats()).redis_reachable


@pytest.mark.usefixtures("restart_after")
async def test_a_silent_redis_costs_one_timeout_then_the_breaker_holds_reads_off(
    gw: GatewayUnderTest, store: Store, server: RedisServer
) -> None:
    names = [unique() for _ in range(6)]
    for name in names:
        await store.save(profile(name))
    before = await gw.stats()
    assert server._proc is not None

    os.kill(server._proc.pid, signal.SIGSTOP)
    first = await gw.get(names[0])
    # Once health says so, the monitor's own ping (which may also have timed out) is done.
    await until(gw.redis_down)
    tripped = await gw.stats()
    rest = [await gw.get(name) for name in names[1:]]
    after = await gw.stats()
    os.kill(server._proc.pid, signal.SIGCONT)
    await until(gw.redis_up)

    assert first.served_from == pb.SERVED_FROM_STORE
    assert {r.served_from for r in rest} == {pb.SERVED_FROM_STORE}
    assert tripped.errors.get("redis_timeout", 0) > before.errors.get("redis_timeout", 0)
    assert after.errors.get("redis_timeout", 0) == tripped.errors.get("redis_timeout", 0)


async def entry(raw: redis.Redis, name: str) -> dict[bytes, bytes]:
    found: Any = await raw.hgetall(KEYS.entry(name))
    return dict(found)


async def marker(raw: redis.Redis, name: str) -> int:
    found: Any = await raw.get(KEYS.marker(name))
    return int(found or 0)


@pytest.mark.usefixtures("restart_after")
async def test_after_a_restart_with_old_data_the_outbox_drops_old_copies_and_warmup_refills(
    gw: GatewayUnderTest, store: Store, server: RedisServer
) -> None:
    hot, warm = unique("Hot"), unique("Warm")
    old = await store.save(profile(hot, seed=1))
    await store.save(profile(warm))
    for _ in range(5):
        await gw.get(hot)
    await gw.get(warm)
    await gw.gateway.flush_reads()
    raw = redis.Redis.from_url(server.url)
    try:
        # Redis keeps its data across the restart: the old copy of hot comes back with it.
        await raw.save()
        await raw.aclose()
        server.stop()
        await until(gw.redis_down)
        new = await store.save(profile(hot, seed=2))
        server.start()
        await until(gw.redis_up)
        raw = redis.Redis.from_url(server.url)
        # The save could not reach Redis; the store's outbox relay runs it once Redis is back.
        await until(lambda: _marked(raw, hot, new))

        await until(lambda: _holds(raw, hot, new))
        await until(lambda: _holds(raw, warm, None))
    finally:
        await raw.aclose()
    read = await gw.get(hot)

    assert new > old
    assert read.profile.version == new


async def _marked(raw: redis.Redis, name: str, version: int) -> bool:
    return await marker(raw, name) >= version


async def _holds(raw: redis.Redis, name: str, version: int | None) -> bool:
    found = await entry(raw, name)
    if b"v" not in found:
        return False
    return version is None or int(found[b"v"]) == version


async def test_a_gateway_process_whose_redis_froze_still_exits_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    frozen = RedisServer(tmp_path / "redis")
    frozen.start()
    env = {
        "REDIS_URL": frozen.url,
        "REDIS_KEY_PREFIX": unique("test:exit"),
        "PROFILE_STORE_TARGET": unused_target(),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
    }
    process = ServiceProcess(
        "cache_gateway", service_env(database_url, env), log_path=tmp_path / "gateway.log"
    ).start()
    assert process.process is not None and frozen._proc is not None
    try:
        wait_serving(process.target, service=REDIS_HEALTH_NAME)
        os.kill(frozen._proc.pid, signal.SIGSTOP)
        # Long enough for the monitor to be inside a reconnect attempt or a subscriber wait.
        await asyncio.sleep(2.0)
        process.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(_exit_code, process.process, 30.0)
    finally:
        os.kill(frozen._proc.pid, signal.SIGCONT)
        process.stop()
        frozen.stop()

    assert code is not None, "the gateway did not exit within 30 s of SIGTERM"


def _exit_code(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
