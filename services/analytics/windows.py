"""Cover a [since, until) window with whole rollup buckets plus, at the edges, raw rows.

Levels nest: minute < hour < day < month, all UTC. From each edge of the window the
plan climbs to coarser buckets as soon as it is aligned, so a window of any length
reads at most 2 partial minutes of raw rows, 2x59 minute, 2x23 hour and 2x30 day
buckets, plus its whole months; no window at all reads the 'all' bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Instant = datetime | None  # None is unbounded on that side


def _floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _floor_day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _floor_month(t: datetime) -> datetime:
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(t: datetime) -> datetime:
    return t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)


Round = Callable[[datetime], datetime]


def _ceil(floor: Round, step: Round) -> Round:
    def ceil(t: datetime) -> datetime:
        f = floor(t)
        return f if f == t else step(f)

    return ceil


# (level, floor, ceil) from finest to coarsest.
_LEVELS: list[tuple[str, Round, Round]] = [
    ("minute", _floor_minute, _ceil(_floor_minute, lambda t: t + timedelta(minutes=1))),
    ("hour", _floor_hour, _ceil(_floor_hour, lambda t: t + timedelta(hours=1))),
    ("day", _floor_day, _ceil(_floor_day, lambda t: t + timedelta(days=1))),
    ("month", _floor_month, _ceil(_floor_month, _next_month)),
]


@dataclass(frozen=True)
class Span:
    """Buckets of one level (or raw rows when level is 'raw') with start in [low, high)."""

    level: str
    low: Instant
    high: Instant


@dataclass
class Plan:
    spans: list[Span] = field(default_factory=list)

    def add(self, level: str, low: Instant, high: Instant) -> None:
        if low is None or high is None or low < high:
            self.spans.append(Span(level, low, high))


def _utc(t: Instant) -> Instant:
    return None if t is None else t.astimezone(UTC)


def plan(since: Instant, until: Instant) -> Plan:
    """Disjoint spans whose union is exactly [since, until)."""
    result = Plan()
    if since is None and until is None:
        result.spans.append(Span("all", None, None))
        return result
    low, high = _utc(since), _utc(until)
    if low is not None and high is not None and low >= high:
        return result
    finer = "raw"
    for level, floor, ceil in _LEVELS:
        aligned_low = None if low is None else ceil(low)
        aligned_high = None if high is None else floor(high)
        if aligned_low is not None and aligned_high is not None and aligned_low >= aligned_high:
            # No whole bucket of this level fits: the rest is covered by the finer level.
            result.add(finer, low, high)
            return result
        if low is not None:
            result.add(finer, low, aligned_low)
        if high is not None:
            result.add(finer, aligned_high, high)
        low, high, finer = aligned_low, aligned_high, level
    result.add(finer, low, high)
    return result
