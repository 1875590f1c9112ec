"""The similarity operations, each one read-only transaction on the service's own pool."""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from services.similarity import recall
from services.similarity.recall import RecallReport
from services.similarity.search import (
    IndexSettings,
    Match,
    Query,
    SearchFilter,
    SimilaritySearch,
    Tuning,
    recommendation_vector,
)
from shared.db.engine import Database
from shared.metrics import SIMILARITY_SEARCHES


class SimilarityRepository:
    """Find, search, recommend and measure; the servicer maps protos to these calls."""

    def __init__(
        self, db: Database, index: IndexSettings, *, recall_max_distances: int = 2_000_000
    ) -> None:
        self.db = db
        self.search = SimilaritySearch(index)
        self.recall_max_distances = recall_max_distances

    async def find_similar(
        self,
        *,
        artist_name: str,
        limit: int,
        search_filter: SearchFilter,
        tuning: Tuning,
        time_left: float | None,
    ) -> list[Match]:
        query = Query(limit, source_name=artist_name, filter=search_filter, tuning=tuning)
        SIMILARITY_SEARCHES.labels(kind="find_similar").inc()
        return await self._nearest(query, time_left)

    async def search_by_embedding(
        self,
        *,
        vector: str,
        limit: int,
        exclude_names: Sequence[str],
        min_similarity: float | None,
        search_filter: SearchFilter,
        tuning: Tuning,
        time_left: float | None,
    ) -> list[Match]:
        query = Query(
            limit, vector=vector, exclude_names=exclude_names, filter=search_filter, tuning=tuning
        )
        SIMILARITY_SEARCHES.labels(kind="search_by_embedding").inc()
        matches = await self._nearest(query, time_left)
        # The cut comes after the limit: results are best first, so dropping the tail
        # equals filtering first, and the index scan is not sent hunting for rows.
        if min_similarity is None:
            return matches
        return [m for m in matches if m.similarity >= min_similarity]

    async def _nearest(self, query: Query, time_left: float | None) -> list[Match]:
        """A default query tries the one-statement index scan first; a tuned query, or one
        the index answered short, runs its whole search in a transaction."""
        index_rows: list[Match] | None = None
        if self.search.is_default(query):
            started = time.monotonic()
            index_rows = await self.search.index_scan(self.db, query, time_left)
            if len(index_rows) >= query.limit:
                return index_rows
            if time_left is not None:
                time_left -= time.monotonic() - started

        async def work(session: AsyncSession) -> list[Match]:
            return await self.search.nearest(session, query, index_rows=index_rows)

        return await self.db.run(work, time_left=time_left, idempotent=True)

    async def recommend(
        self,
        *,
        positives: Sequence[str],
        negatives: Sequence[str],
        limit: int,
        search_filter: SearchFilter,
        tuning: Tuning,
        time_left: float | None,
    ) -> list[Match]:
        async def work(session: AsyncSession) -> list[Match]:
            found = await self.search.embeddings_of(session, [*positives, *negatives])
            vector = recommendation_vector(
                [found[n] for n in positives], [found[n] for n in negatives]
            )
            exclude = tuple(item.artist_id for item in found.values())
            query = Query(
                limit, vector=vector, exclude_ids=exclude, filter=search_filter, tuning=tuning
            )
            return await self.search.nearest(session, query)

        SIMILARITY_SEARCHES.labels(kind="recommend").inc()
        return await self.db.run(work, time_left=time_left, idempotent=True)

    async def measure_recall(
        self, *, sample_size: int, k: int, ef_search: int | None, time_left: float | None
    ) -> RecallReport:
        """recall@k of the index scan against exact search, over randomly sampled artists
        (fewer when sample x stored embeddings would pass the recall_max_distances cap)."""

        async def work(session: AsyncSession) -> RecallReport:
            return await recall.measure(
                session,
                sample_size=sample_size,
                k=k,
                ef_search=await self.search.tune(session, ef_search),
                max_distances=self.recall_max_distances,
                time_left=time_left,
                statement_timeout_ms=self.db.settings.db_statement_timeout_ms,
            )

        SIMILARITY_SEARCHES.labels(kind="measure_recall").inc()
        return await self.db.run(work, time_left=time_left, idempotent=True)
