"""Wiring of the profile_store service: settings → engine → repository → servicer → definition."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, model_validator

from services.profile_store import vectors
from services.profile_store.invalidation import Invalidator
from services.profile_store.repository import ProfileRepository
from services.profile_store.servicer import ProfileStoreServicer
from shared.cache.authority import Authority
from shared.db import migrate
from shared.db.engine import Database
from shared.grpc.server import ServiceDefinition
from shared.metrics import DATABASE, REQUEST_LOG, STORE
from shared.settings import RedisSettings, ServiceSettings
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc


class Settings(ServiceSettings, RedisSettings):
    """Settings of the profile_store process."""

    # How long a save waits, after its commit, for Redis and every connected gateway to
    # confirm the invalidation before it answers cache_invalidated=false.
    cache_invalidation_timeout_ms: int = Field(default=300, ge=10, le=10_000)
    # How often the relay looks for invalidations the gateway has not acknowledged,
    # and the longest it waits before retrying one.
    profile_store_outbox_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    profile_store_outbox_max_backoff_seconds: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _backoff_covers_interval(self) -> Settings:
        if (
            self.profile_store_outbox_max_backoff_seconds
            < self.profile_store_outbox_interval_seconds
        ):
            raise ValueError(
                "PROFILE_STORE_OUTBOX_MAX_BACKOFF_SECONDS must be at least "
                "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS"
            )
        return self


def connect_database(settings: ServiceSettings) -> Database:
    """The store's engine, speaking pgvector's binary format (see vectors.py)."""
    db = Database.connect(settings, application_name="profile_store")
    vectors.register_codec(db.engine)
    return db


def invalidator(settings: Settings, db: Database) -> Invalidator:
    authority = Authority(settings) if settings.redis_url is not None else None
    return Invalidator(
        db,
        authority,
        timeout=settings.cache_invalidation_timeout_ms / 1000,
        relay_interval=settings.profile_store_outbox_interval_seconds,
        max_backoff=settings.profile_store_outbox_max_backoff_seconds,
    )


@dataclass
class ProfileStore:
    """The assembled service; tests reach its parts (the relay they drive themselves)."""

    db: Database
    invalidator: Invalidator
    repository: ProfileRepository
    definition: ServiceDefinition


def assemble(settings: Settings) -> ProfileStore:
    db = connect_database(settings)
    invalidations = invalidator(settings, db)
    repository = ProfileRepository(db, invalidations)
    servicer = ProfileStoreServicer(repository)
    definition = ServiceDefinition(
        name="profile_store",
        full_names=[pb.DESCRIPTOR.services_by_name["ProfileStoreService"].full_name],
        register=lambda server: pb_grpc.add_ProfileStoreServiceServicer_to_server(servicer, server),
        readiness=migrate.schema_check(db),
        cleanups=[invalidations.close, db.dispose],
        background=[invalidations.relay_forever],
        metrics=[DATABASE, REQUEST_LOG, STORE],
    )
    if invalidations.authority is not None:
        definition.background.append(invalidations.authority.run)
    return ProfileStore(db, invalidations, repository, definition)


async def build(settings: Settings) -> ServiceDefinition:
    return assemble(settings).definition
