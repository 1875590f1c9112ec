"""recall@k of the HNSW index against exact search: one sample, two batched statements.

Each sampled artist queries for its k nearest others (itself left out, as in
FindSimilarArtists). One statement runs every query through the index, a LATERAL join over the
sample; one more runs every query exactly, ordering by `distance + 0`, an expression the index
cannot serve, so the planner computes each distance. The exact part costs sample x stored
distances, so the sample shrinks to fit max_distances.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from shared.errors import DeadlineExceeded, FailedPrecondition

_SAMPLE_SQL = text(
    "SELECT artist_id, count(*) OVER () AS stored FROM style_profiles"
    " WHERE embedding IS NOT NULL ORDER BY random() LIMIT :n"
)
_NEIGHBOURS_SQL = """
SELECT q.artist_id AS query_id, nn.artist_id AS found_id
FROM style_profiles q
CROSS JOIN LATERAL (
    SELECT sp.artist_id FROM style_profiles sp
    WHERE sp.embedding IS NOT NULL AND sp.artist_id <> q.artist_id
    ORDER BY {distance}
    LIMIT :k
) nn
WHERE q.artist_id = ANY(CAST(:ids AS uuid[]))
"""
INDEX_SQL = text(_NEIGHBOURS_SQL.format(distance="sp.embedding <=> q.embedding"))
EXACT_SQL = text(_NEIGHBOURS_SQL.format(distance="(sp.embedding <=> q.embedding) + 0"))
_LOCAL_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


@dataclass(frozen=True)
class RecallReport:
    recall: float
    sample_size: int
    k: int
    ef_search: int
    index_latency_ms_mean: float
    exact_latency_ms_mean: float


class _Clock:
    """The caller's deadline, handed to each statement as its own statement_timeout."""

    def __init__(self, time_left: float | None, cap_ms: int) -> None:
        self.deadline = None if time_left is None else time.monotonic() + time_left
        self.cap_ms = cap_ms

    async def limit(self, session: AsyncSession) -> None:
        if self.deadline is None:
            return
        left_ms = int((self.deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise DeadlineExceeded("the deadline expired while measuring recall")
        await session.execute(_LOCAL_TIMEOUT, {"ms": str(min(left_ms, self.cap_ms))})


async def _neighbours(
    session: AsyncSession, sql: TextClause, ids: Sequence[uuid.UUID], k: int
) -> tuple[dict[uuid.UUID, set[uuid.UUID]], float]:
    """Each query's top-k and the statement's seconds."""
    started = time.perf_counter()
    result = await session.execute(sql, {"ids": list(ids), "k": k})
    found: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for row in result:
        found[row.query_id].add(row.found_id)
    return found, time.perf_counter() - started


async def measure(
    session: AsyncSession,
    *,
    sample_size: int,
    k: int,
    ef_search: int,
    max_distances: int,
    time_left: float | None,
    statement_timeout_ms: int,
) -> RecallReport:
    """Per query, recall is |index ∩ exact| / |exact|, which is k except when fewer than k
    other artists exist; the report's sample_size is the number of queries measured."""
    clock = _Clock(time_left, statement_timeout_ms)
    await clock.limit(session)
    rows = (await session.execute(_SAMPLE_SQL, {"n": sample_size})).all()
    if not rows:
        raise FailedPrecondition("no stored embeddings to measure recall on")
    fits = max(1, max_distances // int(rows[0].stored))
    ids = [row.artist_id for row in rows[:fits]]
    await clock.limit(session)
    approx, index_s = await _neighbours(session, INDEX_SQL, ids, k)
    await clock.limit(session)
    exact, exact_s = await _neighbours(session, EXACT_SQL, ids, k)
    recalls = [len(truth & approx.get(q, set())) / len(truth) for q, truth in exact.items()]
    n = len(ids)
    return RecallReport(
        recall=sum(recalls) / len(recalls) if recalls else 1.0,
        sample_size=n,
        k=k,
        ef_search=ef_search,
        index_latency_ms_mean=index_s * 1000 / n,
        exact_latency_ms_mean=exact_s * 1000 / n,
    )
