"""Shared pieces of the profile store tests: the store in-process, a recording gateway, builders.

Test modules import the fixtures they use; each module gets its own servers.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from services.profile_store.app import ProfileStore, Settings, assemble
from shared.db.engine import Database
from shared.embedded.ports import free_port
from shared.grpc.server import RunningServer, ServiceDefinition, start_server, stop_server
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc


class RecordingGateway(gateway_grpc.CacheGatewayServiceServicer):
    """A cache gateway over real gRPC that records InvalidateProfile and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[gateway_pb.InvalidateProfileRequest] = []
        self.fail_with: grpc.StatusCode | None = None
        self.delay = 0.0

    async def InvalidateProfile(
        self, request: gateway_pb.InvalidateProfileRequest, context: Any
    ) -> gateway_pb.InvalidateProfileResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            await context.abort(self.fail_with, "told to fail")
        self.calls.append(request)
        return gateway_pb.InvalidateProfileResponse(redis_invalidated=True)

    def reset(self) -> None:
        self.calls.clear()
        self.fail_with = None
        self.delay = 0.0

    def calls_for(self, name: str) -> list[gateway_pb.InvalidateProfileRequest]:
        return [c for c in self.calls if c.artist_name == name]


async def start_gateway(recorder: RecordingGateway, port: int = 0) -> RunningServer:
    definition = ServiceDefinition(
        name="recording-gateway",
        full_names=["stylebase.cache_gateway.v1.CacheGatewayService"],
        register=lambda server: gateway_grpc.add_CacheGatewayServiceServicer_to_server(
            recorder, server
        ),
    )
    return await start_server(f"127.0.0.1:{port}", definition)


@dataclass
class Store:
    stub: pb_grpc.ProfileStoreServiceAsyncStub
    parts: ProfileStore
    gateway: RecordingGateway
    running: RunningServer
    channel: grpc.aio.Channel
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.parts.db


async def open_store(
    database_url: str, gateway_target: str, gateway: RecordingGateway, **settings: Any
) -> Store:
    config = Settings(
        POSTGRES_DATABASE_URL=database_url,
        cache_gateway_target=gateway_target,
        db_pool_size=10,
        **settings,
    )
    parts = assemble(config)
    # Tests drive the relay themselves, so recorded calls come only from what they do.
    parts.definition.background.clear()
    running = await start_server("127.0.0.1:0", parts.definition)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Store(pb_grpc.ProfileStoreServiceStub(channel), parts, gateway, running, channel)


async def close_store(store: Store) -> None:
    await store.channel.close(None)
    await stop_server(store.running, grace=0)


@asynccontextmanager
async def running_store(database_url: str, **settings: Any) -> AsyncIterator[Store]:
    """The store in this process, talking to a recording gateway; each module opens one."""
    # Only InvalidateProfile is recorded; the other gateway RPCs stay unimplemented.
    recorder = RecordingGateway()  # type: ignore[abstract]
    gateway = await start_gateway(recorder)
    opened = await open_store(database_url, f"127.0.0.1:{gateway.port}", recorder, **settings)
    try:
        yield opened
    finally:
        await close_store(opened)
        await stop_server(gateway, grace=0)


def fresh_store(store: Store) -> Store:
    """The store over tables clean_db has just emptied, with a gateway that answers."""
    store.gateway.reset()
    return store


def unique(prefix: str = "Artist") -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


def embedding(seed: int | None = None) -> list[float]:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def params(**overrides: float) -> common_pb2.QuantitativeParams:
    values: dict[str, float] = {
        "tempo_min": 85.0,
        "tempo_max": 98.0,
        "tempo_avg": 92.0,
        "swing_percent": 58.5,
        "ghost_note_prob": 0.35,
        "syncopation_level": 0.6,
        "velocity_mean": 88.0,
        "velocity_std": 14.0,
    }
    values.update(overrides)
    return common_pb2.QuantitativeParams(**values)


def profile(name: str, *, with_embedding: bool = True, **overrides: Any) -> common_pb2.StyleProfile:
    message = common_pb2.StyleProfile(
        artist_name=name,
        text_description=f"{name} plays behind the beat with loose hi-hats.",
        quantitative_params=params(),
        midi_templates=[f"templates/{name.replace(' ', '_')}/groove_1.mid"],
        embedding=embedding() if with_embedding else [],
        confidence_score=0.8,
        sources_count=common_pb2.SourceCounts(papers=1, articles=3, audio=5, midi=2),
    )
    for key, value in overrides.items():
        if key == "quantitative_params" and isinstance(value, dict):
            message.quantitative_params.CopyFrom(params(**value))
        else:
            field_value = getattr(message, key)
            if hasattr(field_value, "CopyFrom") and not isinstance(value, str | float | int):
                field_value.CopyFrom(value)
            elif hasattr(field_value, "extend"):
                del field_value[:]
                field_value.extend(value)
            else:
                setattr(message, key, value)
    return message


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def count(db: Database, sql: str, **params: Any) -> int:
    async with db.transaction() as session:
        value = await session.scalar(text(sql), params)
    return int(value or 0)


def unused_target() -> str:
    """host:port where nothing listens."""
    return f"127.0.0.1:{free_port()}"
