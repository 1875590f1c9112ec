"""gRPC servicer of AnalyticsService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from typing import Any

import grpc

from services.analytics import requests
from services.analytics.repository import AnalyticsRepository
from services.analytics.responses import history_row
from shared.db.idempotency import key_of
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    def __init__(self, repository: AnalyticsRepository) -> None:
        self._repository = repository

    async def RecordGeneration(
        self, request: pb.RecordGenerationRequest, context: Context
    ) -> pb.RecordGenerationResponse:
        generation = requests.new_generation(request)
        return await self._repository.record(
            generation, key=key_of(request), time_left=context.time_remaining()
        )

    async def BatchRecordGenerations(
        self, request: pb.BatchRecordGenerationsRequest, context: Context
    ) -> pb.BatchRecordGenerationsResponse:
        generations = requests.new_generations(request)
        return await self._repository.record_many(
            generations, key=key_of(request), time_left=context.time_remaining()
        )

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        stats = await self._repository.stats(
            requests.window(request), time_left=context.time_remaining()
        )
        total = stats.total
        return pb.GetStatsResponse(
            total_generations=total,
            avg_generation_time_ms=stats.sum_time_ms / total if total else 0.0,
            total_cost_usd=stats.sum_cost_usd,
            provider_usage={p.provider: p.generations for p in stats.providers},
            avg_cost_per_generation=stats.sum_cost_usd / total if total else 0.0,
            cached_artists=stats.cached_artists,
            p50_generation_time_ms=stats.percentile(0.50),
            p95_generation_time_ms=stats.percentile(0.95),
            providers=[
                pb.ProviderStats(
                    provider=p.provider,
                    generations=p.generations,
                    avg_generation_time_ms=p.avg_time_ms,
                    avg_cost_usd=p.avg_cost_usd,
                    total_cost_usd=p.total_cost_usd,
                )
                for p in stats.providers
            ],
            total_tokens=stats.sum_tokens,
            percentile_relative_error=stats.percentile_error,
        )

    async def GetArtistHistory(
        self, request: pb.GetArtistHistoryRequest, context: Context
    ) -> pb.GetArtistHistoryResponse:
        name = requests.history_name(request)
        limit = requests.history_limit(request)
        page = await self._repository.history(
            name=name,
            limit=limit,
            page_token=request.page_token,
            time_left=context.time_remaining(),
        )
        return pb.GetArtistHistoryResponse(
            generations=[history_row(row, page.artist_name) for row in page.rows],
            total_generations=page.total,
            next_page_token=page.next_page_token,
        )
