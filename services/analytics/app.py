"""Wiring of the analytics service: settings → engine → servicer → server definition."""

from __future__ import annotations

from services.analytics.servicer import AnalyticsServicer
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.settings import ServiceSettings
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings):
    """Settings of the analytics process."""


async def build(settings: Settings) -> ServiceDefinition:
    db = Database.connect(settings, application_name="analytics")
    # Abstract while RPCs are pending (shared.pending); mypy flags this once none are.
    servicer = AnalyticsServicer()  # type: ignore[abstract]
    return ServiceDefinition(
        name="analytics",
        full_names=[pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name],
        register=lambda server: pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server),
        readiness=db.ping,
        cleanups=[db.dispose],
    )
