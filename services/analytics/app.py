"""Wiring of the analytics service: settings → engine → repository → servicer → definition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import Field

from services.analytics.recorder import Recorder
from services.analytics.repository import AnalyticsRepository
from services.analytics.servicer import AnalyticsServicer
from shared.db import migrate
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.metrics import ANALYTICS, DATABASE, REQUEST_LOG
from shared.settings import ServiceSettings
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings):
    """Settings of the analytics process."""

    # Concurrent write transactions of RecordGeneration, each taking every record waiting (at
    # most the batch max): few enough to leave the pool for reads, enough to overlap commits.
    analytics_record_writers: int = Field(default=4, ge=1, le=64)
    analytics_record_batch_max: int = Field(default=256, ge=1, le=1000)


async def build(settings: Settings) -> ServiceDefinition:
    db = Database.connect(settings, application_name="analytics")
    # Reads go through the read-only role when its URL is configured.
    reads = (
        Database.connect(settings, application_name="analytics", readonly=True)
        if settings.readonly_database_url
        else db
    )
    recorder = Recorder(
        db,
        writers=settings.analytics_record_writers,
        max_batch=settings.analytics_record_batch_max,
    )
    repository = AnalyticsRepository(recorder=recorder, reads=reads)
    servicer = AnalyticsServicer(repository)
    cleanups: list[Callable[[], Awaitable[None]]] = [recorder.close, db.dispose]
    if reads is not db:
        cleanups.append(reads.dispose)
    return ServiceDefinition(
        name="analytics",
        full_names=[pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name],
        register=lambda server: pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server),
        readiness=migrate.schema_check(db),
        cleanups=cleanups,
        metrics=[DATABASE, REQUEST_LOG, ANALYTICS],
    )
