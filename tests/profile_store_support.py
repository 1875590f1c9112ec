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
from shared.cache.client import Subscriber, connect, script
from shared.cache.keys import Keys
from shared.cache.protocol import Drop, Message, ack
from shared.db.engine import Database
from shared.embedded.ports import free_port
from shared.grpc.server import RunningServer, start_server, stop_server
from shared.settings import RedisSettings
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc


class RecordingGateway:
    """A gateway as the store sees one, over real Redis: registered in the gateways set,
    subscribed to invalidations, recording them and acknowledging unless told not to."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.keys = Keys(settings.redis_key_prefix)
        self.member = f"recorder-{uuid.uuid4().hex[:8]}"
        self.calls: list[Drop] = []
        self.silent = False
        self.delay = 0.0
        self._heartbeat = script(self.client, "heartbeat")
        self._subscriber = Subscriber(settings, self.client)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> RecordingGateway:
        pubsub = await self._subscriber.open(self.keys.channel)
        await self._beat_once()
        self._tasks = [asyncio.create_task(self._listen(pubsub)), asyncio.create_task(self._beat())]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self.client.zrem(self.keys.gateways, self.member)
        await self._subscriber.close()
        await self.client.aclose()

    async def _beat_once(self) -> None:
        await self._heartbeat(keys=[self.keys.gateways], args=[self.member, 30])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.redis_health_interval_seconds / 2)
            await self._beat_once()

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None:
                continue
            body = Message.decode(message["data"])
            self.calls.extend(body.drops)
            if self.delay:
                await asyncio.sleep(self.delay)
            if not self.silent:
                await self.client.publish(body.reply_to, ack(body.id, self.member))

    def reset(self) -> None:
        self.calls.clear()
        self.silent = False
        self.delay = 0.0

    def calls_for(self, name: str) -> list[Drop]:
        return [c for c in self.calls if c.name == name]


@dataclass
class Store:
    stub: pb_grpc.ProfileStoreServiceAsyncStub
    parts: ProfileStore
    gateway: RecordingGateway | None
    running: RunningServer
    channel: grpc.aio.Channel
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.parts.db


async def open_store(database_url: str, gateway: RecordingGateway | None, **settings: Any) -> Store:
    config = Settings(POSTGRES_DATABASE_URL=database_url, db_pool_size=10, **settings)
    parts = assemble(config)
    # Tests drive the relay themselves, so recorded calls come only from what they do; the
    # store still listens for the gateways' acknowledgements.
    parts.definition.background.clear()
    if parts.invalidator.authority is not None:
        parts.definition.background.append(parts.invalidator.authority.run)
    running = await start_server("127.0.0.1:0", parts.definition)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Store(pb_grpc.ProfileStoreServiceStub(channel), parts, gateway, running, channel)


async def close_store(store: Store) -> None:
    await store.channel.close(None)
    await stop_server(store.running, grace=0)


@asynccontextmanager
async def running_store(database_url: str, **settings: Any) -> AsyncIterator[Store]:
    """The store in this process; each module opens one. With redis_url, a recording
    gateway listens on that Redis."""
    recorder = None
    if settings.get("redis_url"):
        recorder = await RecordingGateway(RedisSettings(**settings)).start()
    opened = await open_store(database_url, recorder, **settings)
    try:
        yield opened
    finally:
        await close_store(opened)
        if recorder is not None:
            await recorder.stop()


def fresh_store(store: Store) -> Store:
    """The store over tables clean_db has just emptied, with a gateway that answers."""
    if store.gateway is not None:
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
