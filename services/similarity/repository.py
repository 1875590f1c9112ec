"""The similarity operations, each one read-only transaction on the service's own pool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

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
from shared.errors import FailedPrecondition
from shared.metrics import SIMILARITY_SEARCHES

_SAMPLE_SQL = text(
    "SELECT artist_id, embedding::text AS embedding FROM style_profiles"
    " WHERE embedding IS NOT NULL ORDER BY random() LIMIT :n"
)


@dataclass(frozen=True)
class RecallReport:
    recall: float
    sample_size: int
    k: int
    ef_search: int
    index_latency_ms_mean: float
    exact_latency_ms_mean: float


class SimilarityRepository:
    """Find, search, recommend and measure; the servicer maps protos to these calls."""

    def __init__(self, db: Database, index: IndexSettings) -> None:
        self.db = db
        self.search = SimilaritySearch(index)

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
        """recall@k of the index scan against exact search, over randomly sampled artists.

        Each sampled artist queries for its neighbours (itself left out, as in
        FindSimilarArtists). Per query, recall is |index ∩ exact| / |exact|, which is
        k except when fewer than k other artists exist.
        """

        async def work(session: AsyncSession) -> RecallReport:
            rows = (await session.execute(_SAMPLE_SQL, {"n": sample_size})).all()
            if not rows:
                raise FailedPrecondition("no stored embeddings to measure recall on")
            ef = await self.search.tune(session, ef_search)
            recalls: list[float] = []
            index_s = exact_s = 0.0
            for row in rows:
                query = Query(k, vector=row.embedding, exclude_ids=(row.artist_id,))
                started = time.perf_counter()
                approx = await self.search.scan(session, query, exact=False)
                index_s += time.perf_counter() - started
                started = time.perf_counter()
                exact = await self.search.scan(session, query, exact=True)
                exact_s += time.perf_counter() - started
                if exact:
                    truth = {m.artist_id for m in exact}
                    recalls.append(len(truth & {m.artist_id for m in approx}) / len(truth))
            n = len(rows)
            return RecallReport(
                recall=sum(recalls) / len(recalls) if recalls else 1.0,
                sample_size=n,
                k=k,
                ef_search=ef,
                index_latency_ms_mean=index_s * 1000 / n,
                exact_latency_ms_mean=exact_s * 1000 / n,
            )

        SIMILARITY_SEARCHES.labels(kind="measure_recall").inc()
        return await self.db.run(work, time_left=time_left, idempotent=True)
