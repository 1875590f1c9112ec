"""gRPC servicer of CacheGatewayService: proto in, proto out; the work is in the gateway."""

from __future__ import annotations

import time
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from services.cache_gateway.gateway import Gateway
from services.cache_gateway.stats import rate
from shared import validation
from shared.errors import InvalidArgument
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
MAX_WARM_NAMES = 10_000


class CacheGatewayServicer(pb_grpc.CacheGatewayServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def GetStyleProfile(
        self, request: pb.GetStyleProfileRequest, context: Context
    ) -> pb.GetStyleProfileResponse:
        name = validation.artist_name(request.artist_name)
        if request.min_version < 0:
            raise InvalidArgument("min_version", "must not be negative")
        served = await self.gateway.get(name, request.min_version)
        age = max(0, time.time_ns() - int(served.fetched_at * 1e9))
        return pb.GetStyleProfileResponse(
            profile=served.profile,
            served_from=served.served_from,
            stale=served.stale,
            age=Duration(seconds=age // 1_000_000_000, nanos=age % 1_000_000_000),
        )

    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, context: Context
    ) -> pb.GetCacheStatsResponse:
        gateway, stats = self.gateway, self.gateway.stats
        redis_entries, redis_bytes = await gateway.redis_usage()
        return pb.GetCacheStatsResponse(
            in_process=pb.TierStats(
                hits=stats.memory_hits,
                misses=stats.memory_misses,
                hit_rate=rate(stats.memory_hits, stats.memory_misses),
                entries=len(gateway.memory.entries),
                bytes=gateway.memory.bytes,
            ),
            redis=pb.TierStats(
                hits=stats.redis_hits,
                misses=stats.redis_misses,
                hit_rate=rate(stats.redis_hits, stats.redis_misses),
                entries=redis_entries,
                bytes=redis_bytes,
            ),
            hit_rate=stats.hit_rate,
            store_fetches=stats.store_fetches,
            single_flight_merges=gateway.flights.merges,
            redis_configured=gateway.redis is not None,
            redis_reachable=gateway.link is not None and gateway.link.up,
            errors=dict(stats.errors),
            negative_hits=stats.negative_hits,
        )

    async def WarmCache(
        self, request: pb.WarmCacheRequest, context: Context
    ) -> pb.WarmCacheResponse:
        if len(request.artist_names) > MAX_WARM_NAMES:
            raise InvalidArgument("artist_names", f"must have at most {MAX_WARM_NAMES} names")
        names = [
            validation.artist_name(name, f"artist_names[{i}]")
            for i, name in enumerate(request.artist_names)
        ]
        top_n = validation.bounded_int(
            request.top_n,
            "top_n",
            default=self.gateway.settings.cache_warm_top_n,
            low=1,
            high=MAX_WARM_NAMES,
        )
        result = await self.gateway.warm(names, top_n)
        return pb.WarmCacheResponse(
            warmed=result.warmed, not_found=result.not_found, failed=result.failed
        )
