"""Wiring of the similarity service: settings → engine → repository → servicer → definition."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.similarity.canary import recall_canary
from services.similarity.repository import SimilarityRepository
from services.similarity.search import IndexSettings, configure_sessions
from services.similarity.servicer import SimilarityServicer
from shared.db import migrate
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.metrics import DATABASE, SIMILARITY
from shared.settings import ServiceSettings
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings):
    """Settings of the similarity process."""

    # HNSW candidate list when a request does not choose one (pgvector's range).
    similarity_ef_search: int = Field(default=40, ge=1, le=1000)
    # Rows an iterative index scan may visit before a filtered query gives up on the
    # index and falls back to exact search.
    similarity_max_scan_tuples: int = Field(default=20_000, ge=1, le=10_000_000)
    similarity_iterative_scan: Literal["relaxed_order", "strict_order"] = "relaxed_order"
    # Seconds between recall canary runs; 0 turns the canary off.
    similarity_recall_canary_interval_seconds: float = Field(default=0, ge=0, le=86_400)
    similarity_recall_canary_sample_size: int = Field(default=50, ge=1, le=1000)
    similarity_recall_canary_k: int = Field(default=10, ge=1, le=100)
    # The largest MeasureRecall sample a request may ask for.
    similarity_recall_sample_max: int = Field(default=200, ge=1, le=1000)
    # Distances one MeasureRecall may compute exactly (sample x stored embeddings); a larger
    # sample is cut to fit, and the response says how many artists were measured.
    similarity_recall_max_distances: int = Field(default=2_000_000, ge=1_000, le=1_000_000_000)

    def index_settings(self) -> IndexSettings:
        return IndexSettings(
            ef_search=self.similarity_ef_search,
            max_scan_tuples=self.similarity_max_scan_tuples,
            iterative_scan=self.similarity_iterative_scan,
        )


async def build(settings: Settings) -> ServiceDefinition:
    db = Database.connect(settings, application_name="similarity", readonly=True)
    index = settings.index_settings()
    configure_sessions(db.engine, index)
    repository = SimilarityRepository(
        db, index, recall_max_distances=settings.similarity_recall_max_distances
    )
    servicer = SimilarityServicer(
        repository, recall_sample_max=settings.similarity_recall_sample_max
    )
    background = []
    if settings.similarity_recall_canary_interval_seconds > 0:
        background.append(
            recall_canary(
                repository,
                interval_seconds=settings.similarity_recall_canary_interval_seconds,
                sample_size=settings.similarity_recall_canary_sample_size,
                k=settings.similarity_recall_canary_k,
            )
        )
    return ServiceDefinition(
        name="similarity",
        full_names=[pb.DESCRIPTOR.services_by_name["SimilarityService"].full_name],
        register=lambda server: pb_grpc.add_SimilarityServiceServicer_to_server(servicer, server),
        readiness=migrate.schema_check(db),
        cleanups=[db.dispose],
        background=background,
        metrics=[DATABASE, SIMILARITY],
    )
