"""Wiring of the cache gateway: settings → tiers and store channel → servicer → server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.cache_gateway.coherence import RedisLink
from services.cache_gateway.config import Settings
from services.cache_gateway.gateway import Gateway
from services.cache_gateway.memory import MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from services.cache_gateway.servicer import CacheGatewayServicer
from services.cache_gateway.stats import Stats
from services.cache_gateway.store_client import StoreClient
from shared.grpc.server import NOT_SERVING, SERVING, ServiceDefinition
from shared.metrics import CACHE, CACHE_REDIS_CONNECTED, REDIS_LINK
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

FULL_NAME = pb.DESCRIPTOR.services_by_name["CacheGatewayService"].full_name
# Health name of the Redis dependency: NOT_SERVING while Redis is unreachable, while
# the gateway itself stays SERVING from its in-process tier and the store.
REDIS_HEALTH_NAME = f"{FULL_NAME}/redis"
HOUSEKEEPING_SECONDS = 1.0

__all__ = ["REDIS_HEALTH_NAME", "Parts", "Settings", "assemble", "build"]


@dataclass
class Parts:
    gateway: Gateway
    definition: ServiceDefinition


async def build(settings: Settings) -> ServiceDefinition:
    return assemble(settings).definition


def assemble(settings: Settings) -> Parts:
    memory = MemoryTier(
        max_entries=settings.cache_memory_max_entries, max_bytes=settings.cache_memory_max_bytes
    )
    store = StoreClient(
        settings.target_of("profile_store"), timeout=settings.cache_store_timeout_seconds
    )
    redis: RedisTier | None = None
    if settings.redis_url is None:
        log.info(
            "REDIS_URL is not set: in-process copies are kept for %s s only",
            settings.cache_degraded_ttl_seconds,
        )
    else:
        redis = RedisTier(settings)
    stats = Stats()
    gateway = Gateway(settings, memory, store, redis, stats)
    servicer = CacheGatewayServicer(gateway)
    definition = ServiceDefinition(
        name="cache_gateway",
        full_names=[FULL_NAME],
        register=lambda server: pb_grpc.add_CacheGatewayServiceServicer_to_server(servicer, server),
        # No database: no pool or statement series. cache_redis_connected only with a Redis.
        metrics=[CACHE] if redis is None else [CACHE, REDIS_LINK],
    )

    async def report_redis(up: bool) -> None:
        CACHE_REDIS_CONNECTED.set(1 if up else 0)
        if definition.health is not None:
            await definition.health.set(REDIS_HEALTH_NAME, SERVING if up else NOT_SERVING)

    async def warm_after_reconnect() -> None:
        await gateway.warm([], settings.cache_warm_top_n)

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await gateway.flush_reads()
                await gateway.watch_store()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cache housekeeping failed")
            # A gRPC call cancelled under us may answer CANCELLED instead of raising: the
            # task's own pending cancellation still ends the loop.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError

    definition.background.append(housekeeping)
    definition.cleanups.append(store.close)
    if redis is not None:
        gateway.link = RedisLink(
            redis,
            memory,
            stats,
            settings,
            breaker_seconds=settings.redis_breaker_seconds,
            on_state=report_redis,
            on_recovered=warm_after_reconnect,
        )
        definition.background.append(gateway.link.run)
        definition.cleanups.append(redis.close)
    return Parts(gateway, definition)
