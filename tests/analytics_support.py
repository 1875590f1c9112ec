"""Helpers shared by the analytics tests: an in-process server, artists, requests, and
aggregates computed independently over the raw history rows."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from sqlalchemy import text

from services.analytics.app import Settings, build
from shared.db.engine import Database
from shared.grpc.server import start_server, stop_server
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc

# The async stub type exists only in the generated stubs; at run time the plain one is it.
if TYPE_CHECKING:
    Stub = pb_grpc.AnalyticsServiceAsyncStub
else:
    Stub = pb_grpc.AnalyticsServiceStub


@asynccontextmanager
async def analytics_server(database_url: str, **extra: Any) -> AsyncIterator[Stub]:
    settings = Settings(POSTGRES_DATABASE_URL=database_url, db_pool_size=5, **extra)
    running = await start_server("127.0.0.1:0", await build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield pb_grpc.AnalyticsServiceStub(channel)
    finally:
        await stop_server(running, grace=0)


async def add_artist(db: Database, name: str, status: str = "pending") -> uuid.UUID:
    artist_id = uuid.uuid4()
    async with db.transaction() as session:
        await session.execute(
            text("INSERT INTO artists (id, name, research_status) VALUES (:id, :name, :s)"),
            {"id": artist_id, "name": name, "s": status},
        )
    return artist_id


async def delete_artist(db: Database, name: str) -> None:
    async with db.transaction() as session:
        await session.execute(text("DELETE FROM artists WHERE name = :n"), {"n": name})


def request(
    *,
    artist: str = "",
    provider: str = "anthropic",
    time_ms: int = 1200,
    tokens: int = 500,
    cost: float = 0.01,
    files: tuple[str, ...] = ("out/pattern.mid",),
) -> pb.RecordGenerationRequest:
    return pb.RecordGenerationRequest(
        artist_name=artist,
        provider_used=provider,
        generation_time_ms=time_ms,
        tokens_used=tokens,
        cost_usd=cost,
        user_params=pb.UserParams(bars=8, tempo=120.0, time_signature="4/4", variations=2),
        output_files=list(files),
    )


@dataclass
class Truth:
    """Aggregates over raw rows, computed here in Python, not by the service's code."""

    total: int = 0
    sum_time: int = 0
    costs: list[float] = field(default_factory=list)
    tokens: int = 0
    times: list[int] = field(default_factory=list)
    by_provider: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def percentile(self, q: float) -> int:
        ordered = sorted(self.times)
        return ordered[max(1, math.ceil(q * len(ordered))) - 1] if ordered else 0


async def truth(db: Database, where: str = "true", params: dict[str, Any] | None = None) -> Truth:
    async with db.transaction() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT provider_used, generation_time_ms, cost_usd, tokens_used"
                    f" FROM generation_history WHERE {where}"
                ),
                params or {},
            )
        ).all()
    result = Truth()
    for provider, time_ms, cost, tokens in rows:
        result.total += 1
        result.sum_time += time_ms
        result.costs.append(cost or 0.0)
        result.tokens += tokens or 0
        result.times.append(time_ms)
        result.by_provider.setdefault(provider, []).append((time_ms, cost or 0.0))
    return result


async def insert_rows(db: Database, rows: list[dict[str, Any]]) -> None:
    """History rows with chosen created_at, written straight to the table (the triggers run)."""
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO generation_history (id, artist_id, provider_used, generation_time_ms,"
                " tokens_used, cost_usd, user_params, output_files, created_at)"
                " VALUES (gen_random_uuid(), :artist_id, :provider, :time_ms, :tokens, :cost,"
                " '{}', '[]', :created_at)"
            ),
            rows,
        )
