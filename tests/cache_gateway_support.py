"""Shared pieces of the cache gateway tests: a store process, gateways, builders, waiting."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cache_gateway.app import REDIS_HEALTH_NAME, Parts, Settings, assemble
from services.cache_gateway.gateway import Gateway
from shared.embedded.ports import free_port
from shared.grpc.server import RunningServer, start_server, stop_server
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from tests.harness import ServiceProcess, service_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def unique(prefix: str = "Drummer") -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


def profile(name: str, *, text: str = "", seed: int = 0) -> common_pb2.StyleProfile:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description=text or f"{name} plays behind the beat (take {seed}).",
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=85,
            tempo_max=98,
            tempo_avg=92,
            swing_percent=58.5,
            ghost_note_prob=0.35,
            syncopation_level=0.6,
            velocity_mean=88,
            velocity_std=14,
        ),
        midi_templates=[f"templates/{seed}/groove.mid"],
        embedding=[v / norm for v in values],
        confidence_score=0.8,
        sources_count=common_pb2.SourceCounts(papers=1, articles=2, audio=3, midi=4),
    )


async def until(check: Callable[[], Any], *, within: float = 20.0, every: float = 0.05) -> None:
    """Wait for a condition (a plain or async callable) to hold; fail if it never does."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held: {check}")
        await asyncio.sleep(every)


def redis_env(url: str, prefix: str) -> dict[str, str]:
    """What the store and the gateways must share: Redis and the key prefix."""
    return {"REDIS_URL": url, "REDIS_KEY_PREFIX": prefix}


class Store:
    """A real profile store process; it invalidates through the Redis given in extra."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        extra: dict[str, str] | None = None,
    ) -> None:
        env = service_env(database_url, extra)
        self.process = ServiceProcess("profile_store", env, log_path=log_dir / "store.log")
        self.channel: grpc.aio.Channel | None = None

    def start(self) -> Store:
        self.process.start()
        return self

    @property
    def stub(self) -> store_grpc.ProfileStoreServiceAsyncStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.process.target)
        return store_grpc.ProfileStoreServiceStub(self.channel)

    async def save(self, message: common_pb2.StyleProfile) -> int:
        return int((await self.save_reply(message)).profile.version)

    async def save_reply(
        self, message: common_pb2.StyleProfile
    ) -> store_pb.SaveStyleProfileResponse:
        request = store_pb.SaveStyleProfileRequest(profile=message)
        return await self.stub.SaveStyleProfile(request, timeout=10)

    async def delete(self, name: str) -> int:
        request = store_pb.DeleteArtistRequest(artist_name=name)
        reply = await self.stub.DeleteArtist(request, timeout=10)
        return int(reply.version)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        self.process.stop()


@dataclass
class GatewayUnderTest:
    """A gateway served in this process on a known port, with its internals at hand."""

    parts: Parts
    running: RunningServer
    channel: grpc.aio.Channel

    @property
    def gateway(self) -> Gateway:
        return self.parts.gateway

    @property
    def stub(self) -> pb_grpc.CacheGatewayServiceAsyncStub:
        return pb_grpc.CacheGatewayServiceStub(self.channel)

    async def get(self, name: str, min_version: int = 0) -> pb.GetStyleProfileResponse:
        request = pb.GetStyleProfileRequest(artist_name=name, min_version=min_version)
        return await self.stub.GetStyleProfile(request, timeout=10)

    async def stats(self) -> pb.GetCacheStatsResponse:
        return await self.stub.GetCacheStats(pb.GetCacheStatsRequest(), timeout=10)

    async def health(self, service: str = REDIS_HEALTH_NAME) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.aio.AioRpcError:
            return -1
        return int(reply.status)

    async def redis_up(self) -> bool:
        return bool(await self.health() == SERVING)

    async def redis_down(self) -> bool:
        return bool(await self.health() == NOT_SERVING)


async def open_gateway(port: int, store_target: str, **settings: Any) -> GatewayUnderTest:
    config = Settings(profile_store_target=store_target, **settings)
    parts = assemble(config)
    running = await start_server(f"127.0.0.1:{port}", parts.definition)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    opened = GatewayUnderTest(parts, running, channel)
    if config.redis_url is not None:
        await until(opened.redis_up)
    return opened


async def close_gateway(opened: GatewayUnderTest) -> None:
    await opened.channel.close(None)
    await stop_server(opened.running, grace=0)


async def gateway_fixture(
    port: int, store_target: str, **settings: Any
) -> AsyncIterator[GatewayUnderTest]:
    opened = await open_gateway(port, store_target, **settings)
    try:
        yield opened
    finally:
        await close_gateway(opened)


def gateway_port() -> int:
    return free_port()
