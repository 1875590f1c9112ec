"""Wiring of the cache gateway: settings → tiers and store channel → servicer → server."""

from __future__ import annotations

import logging

from services.cache_gateway.servicer import CacheGatewayServicer
from shared.grpc.server import ServiceDefinition
from shared.settings import RedisSettings, ServiceSettings
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Settings(ServiceSettings, RedisSettings):
    """Settings of the cache gateway process."""


async def build(settings: Settings) -> ServiceDefinition:
    if settings.redis_url is None:
        log.info("REDIS_URL is not set: serving from the in-process tier only")
    # Abstract while RPCs are pending (shared.pending); mypy flags this once none are.
    servicer = CacheGatewayServicer()  # type: ignore[abstract]
    return ServiceDefinition(
        name="cache_gateway",
        full_names=[pb.DESCRIPTOR.services_by_name["CacheGatewayService"].full_name],
        register=lambda server: pb_grpc.add_CacheGatewayServiceServicer_to_server(servicer, server),
    )
