"""How a GetStats window is cut into rollup buckets and raw edges (pure, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.windows import Span, plan

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
TRUNC = {
    "minute": lambda t: t.replace(second=0, microsecond=0),
    "hour": lambda t: t.replace(minute=0, second=0, microsecond=0),
    "day": lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0),
    "month": lambda t: t.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
}
instants = st.integers(min_value=0, max_value=3 * 366 * 86_400 * 10**6).map(
    lambda us: EPOCH + timedelta(microseconds=us)
)
maybe = st.one_of(st.none(), instants)


def _covers(span: Span, t: datetime) -> bool:
    if span.level == "all":
        return True
    key = t if span.level == "raw" else TRUNC[span.level](t)
    return (span.low is None or key >= span.low) and (span.high is None or key < span.high)


@settings(max_examples=300, deadline=None)
@given(since=maybe, until=maybe, probes=st.lists(instants, min_size=1, max_size=20))
def test_spans_tile_the_window_exactly_once(
    since: datetime | None, until: datetime | None, probes: list[datetime]
) -> None:
    spans = plan(since, until).spans
    edges = [since, until, *(s for span in spans for s in (span.low, span.high))]
    near = [
        e + d for e in edges if e is not None for d in (timedelta(0), -timedelta(microseconds=1))
    ]
    for t in [*probes, *near]:
        inside = (since is None or t >= since) and (until is None or t < until)
        assert sum(_covers(span, t) for span in spans) == (1 if inside else 0), (t, spans)


@given(since=instants, until=instants)
def test_raw_edges_never_exceed_two_minutes(since: datetime, until: datetime) -> None:
    raw = [s for s in plan(since, until).spans if s.level == "raw"]
    assert len(raw) <= 2
    for span in raw:
        assert span.low is not None and span.high is not None
        assert span.high - span.low <= timedelta(minutes=2)


def test_no_window_reads_the_single_all_bucket() -> None:
    assert plan(None, None).spans == [Span("all", None, None)]


def test_empty_window_reads_nothing() -> None:
    assert plan(EPOCH, EPOCH).spans == []
