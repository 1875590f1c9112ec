"""Wiring of the profile_store service: settings → engine → servicer → server definition."""

from __future__ import annotations

from services.profile_store.servicer import ProfileStoreServicer
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.settings import ServiceSettings
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings):
    """Settings of the profile_store process."""


async def build(settings: Settings) -> ServiceDefinition:
    db = Database.connect(settings, application_name="profile_store")
    # Abstract while RPCs are pending (shared.pending); mypy flags this once none are.
    servicer = ProfileStoreServicer()  # type: ignore[abstract]
    return ServiceDefinition(
        name="profile_store",
        full_names=[pb.DESCRIPTOR.services_by_name["ProfileStoreService"].full_name],
        register=lambda server: pb_grpc.add_ProfileStoreServiceServicer_to_server(servicer, server),
        readiness=db.ping,
        cleanups=[db.dispose],
    )
