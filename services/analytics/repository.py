"""The analytics repository: records go through the group-commit recorder, reads through
the read-only pool when one is configured."""

from __future__ import annotations

from services.analytics.history import HistoryPage, artist_history
from services.analytics.recorder import Recorder
from services.analytics.requests import NewGeneration, Window
from services.analytics.stats import Stats, read_stats
from shared.db.engine import Database
from shared.db.idempotency import Key
from stylebase.analytics.v1 import analytics_service_pb2 as pb


class AnalyticsRepository:
    def __init__(self, *, recorder: Recorder, reads: Database) -> None:
        self._recorder = recorder
        self._reads = reads

    async def record(
        self, generation: NewGeneration, *, key: Key | None, time_left: float | None
    ) -> pb.RecordGenerationResponse:
        return await self._recorder.record(generation, key=key, time_left=time_left)

    async def record_many(
        self, generations: list[NewGeneration], *, key: Key | None, time_left: float | None
    ) -> pb.BatchRecordGenerationsResponse:
        return await self._recorder.record_many(generations, key=key, time_left=time_left)

    async def stats(self, window: Window, *, time_left: float | None) -> Stats:
        return await self._reads.run(lambda s: read_stats(s, window), time_left=time_left)

    async def history(
        self, *, name: str, limit: int, page_token: str, time_left: float | None
    ) -> HistoryPage:
        return await artist_history(
            self._reads, name=name, limit=limit, page_token=page_token, time_left=time_left
        )
