"""The gRPC services the API stands on: one channel each, shared by every request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate

from services.http_api.config import Settings
from shared.grpc.channels import service_channel
from shared.grpc.interceptors import REQUEST_ID_KEY
from shared.logging import request_id_var
from shared.settings import ServiceName
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc

# Readiness asks each upstream's health service; an answer slower than this counts as down.
HEALTH_TIMEOUT_SECONDS = 1.0
UPSTREAMS: tuple[ServiceName, ...] = ("profile_store", "similarity", "analytics", "cache_gateway")


@dataclass
class Upstreams:
    store: store_grpc.ProfileStoreServiceAsyncStub
    similarity: similarity_grpc.SimilarityServiceAsyncStub
    analytics: analytics_grpc.AnalyticsServiceAsyncStub
    gateway: gateway_grpc.CacheGatewayServiceAsyncStub
    channels: dict[ServiceName, grpc.aio.Channel] = field(default_factory=dict)
    # With tracing on, the channels' interceptors send the request id and trace context and
    # record a CLIENT span per call; without, metadata() sends the two and no wrapper runs.
    intercepted: bool = True

    @classmethod
    def connect(cls, settings: Settings, *, traced: bool = False) -> Upstreams:
        channels = {
            name: service_channel(settings.target_of(name), interceptors=traced)
            for name in UPSTREAMS
        }
        return cls(
            store=store_grpc.ProfileStoreServiceStub(channels["profile_store"]),
            similarity=similarity_grpc.SimilarityServiceStub(channels["similarity"]),
            analytics=analytics_grpc.AnalyticsServiceStub(channels["analytics"]),
            gateway=gateway_grpc.CacheGatewayServiceStub(channels["cache_gateway"]),
            channels=channels,
            intercepted=traced,
        )

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """What each call sends: the request id and, when the request carries or records
        a trace, its W3C traceparent."""
        if self.intercepted:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return ((REQUEST_ID_KEY, request_id_var.get()), *carrier.items())

    async def not_serving(self) -> list[str]:
        """The upstreams whose health service does not answer SERVING now."""

        async def serving(channel: grpc.aio.Channel) -> bool:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        names = list(self.channels)
        answers = await asyncio.gather(*(serving(self.channels[n]) for n in names))
        return [name for name, ok in zip(names, answers, strict=True) if not ok]

    async def close(self) -> None:
        await asyncio.gather(*(channel.close(None) for channel in self.channels.values()))
