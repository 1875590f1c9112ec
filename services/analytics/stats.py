"""GetStats from the rollups: one statement over bounded rollup rows and window edges.

Sums and counts are exact (costs are summed as numeric). Percentiles come from a
log-bucket histogram of generation times: slot 0 holds 0 ms, slot s >= 1 holds
(GAMMA**(s-2), GAMMA**(s-1)], and its representative 2*GAMMA**(s-1)/(GAMMA+1) is within
RELATIVE_ERROR of every value in it (generation_time_slot in the migration is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.requests import Window
from services.analytics.windows import Plan, Span, plan

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class ProviderTotals:
    provider: str
    generations: int
    sum_time_ms: int
    sum_cost_usd: Decimal
    sum_tokens: int

    @property
    def avg_time_ms(self) -> float:
        return self.sum_time_ms / self.generations if self.generations else 0.0

    @property
    def total_cost_usd(self) -> float:
        return float(self.sum_cost_usd)

    @property
    def avg_cost_usd(self) -> float:
        return float(self.sum_cost_usd / self.generations) if self.generations else 0.0


@dataclass
class Stats:
    providers: list[ProviderTotals] = field(default_factory=list)
    # slot -> generations
    histogram: dict[int, int] = field(default_factory=dict)
    cached_artists: int = 0

    @property
    def total(self) -> int:
        return sum(p.generations for p in self.providers)

    @property
    def sum_time_ms(self) -> int:
        return sum(p.sum_time_ms for p in self.providers)

    @property
    def sum_cost_usd(self) -> float:
        return float(sum((p.sum_cost_usd for p in self.providers), Decimal(0)))

    @property
    def sum_tokens(self) -> int:
        return min(sum(p.sum_tokens for p in self.providers), INT64_MAX)

    def percentile(self, q: float) -> float:
        """The value of rank ceil(q * n) (nearest-rank), within RELATIVE_ERROR."""
        n = sum(self.histogram.values())
        if n == 0:
            return 0.0
        rank = max(1, math.ceil(q * n))
        seen = 0
        for slot in sorted(self.histogram):
            seen += self.histogram[slot]
            if seen >= rank:
                return slot_value(slot)
        raise AssertionError("histogram counts disagree with their sum")  # pragma: no cover

    @property
    def percentile_error(self) -> float:
        return RELATIVE_ERROR if any(s > 0 for s in self.histogram) else 0.0


def slot_value(slot: int) -> float:
    if slot <= 0:
        return 0.0
    return 2 * GAMMA ** (slot - 1) / (GAMMA + 1)


def _predicate(i: int, span: Span, column: str, params: dict[str, Any]) -> str:
    terms = [] if span.level == "raw" else [f"level = :l{i}"]
    if span.level != "raw":
        params[f"l{i}"] = span.level
    if span.low is not None:
        terms.append(f"{column} >= :lo{i}")
        params[f"lo{i}"] = span.low
    if span.high is not None:
        terms.append(f"{column} < :hi{i}")
        params[f"hi{i}"] = span.high
    return "(" + " AND ".join(terms) + ")"


def _statement(covering: Plan) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    numbered = list(enumerate(covering.spans))
    rolled = [(i, s) for i, s in numbered if s.level != "raw"]
    raw = [(i, s) for i, s in numbered if s.level == "raw"]
    totals: list[str] = []
    slots: list[str] = []
    if rolled:
        where = " OR ".join(_predicate(i, s, "bucket_start", params) for i, s in rolled)
        totals.append(
            "SELECT provider, generations, sum_time_ms, sum_cost_usd, sum_tokens"
            f" FROM generation_rollups WHERE {where}"
        )
        slots.append(f"SELECT slot, generations FROM generation_rollup_histogram WHERE {where}")
    if raw:
        where = " OR ".join(_predicate(i, s, "created_at", params) for i, s in raw)
        totals.append(
            "SELECT provider_used, 1, generation_time_ms, coalesce(cost_usd, 0)::numeric,"
            f" coalesce(tokens_used, 0) FROM generation_history WHERE {where}"
        )
        slots.append(
            "SELECT generation_time_slot(generation_time_ms), 1"
            f" FROM generation_history WHERE {where}"
        )
    parts = [
        "SELECT 'c', NULL, count(*), NULL, NULL, NULL FROM artists WHERE research_status = 'cached'"
    ]
    if totals:
        parts.append(
            "SELECT 'p', provider, sum(generations)::bigint, sum(sum_time_ms), sum(sum_cost_usd),"
            f" sum(sum_tokens) FROM ({' UNION ALL '.join(totals)})"
            " AS t(provider, generations, sum_time_ms, sum_cost_usd, sum_tokens)"
            " GROUP BY provider HAVING sum(generations) > 0"
        )
        parts.append(
            "SELECT 'h', slot::text, sum(generations)::bigint, NULL, NULL, NULL"
            f" FROM ({' UNION ALL '.join(slots)}) AS h(slot, generations)"
            " GROUP BY slot HAVING sum(generations) > 0"
        )
    return " UNION ALL ".join(parts), params


async def read_stats(session: AsyncSession, window: Window) -> Stats:
    """One statement, hence one snapshot: totals, histogram and cached artists agree."""
    sql, params = _statement(plan(window.since, window.until))
    stats = Stats()
    for kind, key, n, sum_time, sum_cost, sum_tokens in await session.execute(text(sql), params):
        if kind == "c":
            stats.cached_artists = int(n)
        elif kind == "h":
            stats.histogram[int(key)] = int(n)
        else:
            stats.providers.append(
                ProviderTotals(key, int(n), int(sum_time), Decimal(sum_cost), int(sum_tokens))
            )
    stats.providers.sort(key=lambda p: p.provider)
    return stats
