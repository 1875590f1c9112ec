"""Wiring of the similarity service: settings → engine → servicer → server definition."""

from __future__ import annotations

from services.similarity.servicer import SimilarityServicer
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.settings import ServiceSettings
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings):
    """Settings of the similarity process."""


async def build(settings: Settings) -> ServiceDefinition:
    db = Database.connect(settings, application_name="similarity")
    # Abstract while RPCs are pending (shared.pending); mypy flags this once none are.
    servicer = SimilarityServicer()  # type: ignore[abstract]
    return ServiceDefinition(
        name="similarity",
        full_names=[pb.DESCRIPTOR.services_by_name["SimilarityService"].full_name],
        register=lambda server: pb_grpc.add_SimilarityServiceServicer_to_server(servicer, server),
        readiness=db.ping,
        cleanups=[db.dispose],
    )
