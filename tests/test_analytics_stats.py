"""GetStats over real gRPC and PostgreSQL: exact against aggregates computed here over the
raw rows, for the whole history, after artist deletions and within windows."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from shared.db.engine import Database
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from tests.analytics_support import (
    Stub,
    Truth,
    add_artist,
    analytics_server,
    delete_artist,
    insert_rows,
    request,
    truth,
)

PROVIDERS = ("anthropic", "google", "openai", "template", "local-llm")


@pytest.fixture(scope="module")
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with analytics_server(database_url) as client:
        yield client


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def assert_matches(reply: pb.GetStatsResponse, expected: Truth) -> None:
    assert reply.total_generations == expected.total
    assert reply.total_tokens == expected.tokens
    total_cost = math.fsum(expected.costs)
    assert reply.total_cost_usd == pytest.approx(total_cost, rel=1e-12, abs=1e-12)
    if expected.total == 0:
        assert reply.avg_generation_time_ms == 0.0
        assert reply.avg_cost_per_generation == 0.0
        assert reply.p50_generation_time_ms == 0.0 and reply.p95_generation_time_ms == 0.0
        assert dict(reply.provider_usage) == {} and list(reply.providers) == []
        return
    assert reply.avg_generation_time_ms == pytest.approx(expected.sum_time / expected.total)
    assert reply.avg_cost_per_generation == pytest.approx(total_cost / expected.total, rel=1e-12)
    usage = {p: len(rows) for p, rows in expected.by_provider.items()}
    assert dict(reply.provider_usage) == usage
    assert [p.provider for p in reply.providers] == sorted(usage)
    for p in reply.providers:
        rows = expected.by_provider[p.provider]
        assert p.generations == len(rows)
        assert p.avg_generation_time_ms == pytest.approx(sum(t for t, _ in rows) / len(rows))
        cost = math.fsum(c for _, c in rows)
        assert p.total_cost_usd == pytest.approx(cost, rel=1e-12, abs=1e-12)
        assert p.avg_cost_usd == pytest.approx(cost / len(rows), rel=1e-12, abs=1e-12)
    bound = reply.percentile_relative_error
    assert 0 < bound <= 0.01
    for q, got in ((0.5, reply.p50_generation_time_ms), (0.95, reply.p95_generation_time_ms)):
        exact = expected.percentile(q)
        assert abs(got - exact) <= bound * exact + 1e-9, (q, got, exact)


async def test_stats_of_empty_history_are_zeros(stub: Stub, clean_db: Database) -> None:
    reply = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert_matches(reply, Truth())
    assert reply.cached_artists == 0
    assert reply.percentile_relative_error == 0.0


async def test_stats_match_raw_aggregates_and_survive_artist_deletion(
    stub: Stub, clean_db: Database
) -> None:
    rng = random.Random(5)
    names = [f"Drummer {i}" for i in range(4)]
    for i, name in enumerate(names):
        await add_artist(clean_db, name, "cached" if i % 2 else "pending")
    calls = [
        request(
            artist=rng.choice([*names, ""]),
            provider=rng.choice(PROVIDERS),
            time_ms=int(rng.lognormvariate(7, 1.2)) if rng.random() > 0.05 else 0,
            tokens=rng.randrange(0, 5000),
            cost=round(rng.uniform(0, 0.3), 6),
        )
        for _ in range(300)
    ]
    for message in calls:
        await stub.RecordGeneration(message, timeout=10)
    reply = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert_matches(reply, await truth(clean_db))
    assert reply.cached_artists == 2

    await delete_artist(clean_db, names[1])
    await delete_artist(clean_db, names[2])
    after = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert_matches(after, await truth(clean_db))
    assert after.total_generations == 300
    assert after.cached_artists == 1


PROBE_ROLE = "analytics_rollups_only_probe"


@pytest.fixture
async def rollups_only_url(database_url: str, db: Database) -> AsyncIterator[str]:
    """A role that may read everything GetStats needs except the history table itself."""
    grants = [
        f"GRANT SELECT ON artists, generation_rollups, generation_rollup_histogram TO {PROBE_ROLE}",
        f"GRANT USAGE ON SCHEMA public TO {PROBE_ROLE}",
    ]
    async with db.transaction() as session:
        await session.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
                f" '{PROBE_ROLE}') THEN CREATE ROLE {PROBE_ROLE} LOGIN; END IF; END $$"
            )
        )
        for grant in grants:
            await session.execute(text(grant))
    rest = database_url.split("@", 1)[1]
    yield f"postgresql+asyncpg://{PROBE_ROLE}@{rest}"
    async with db.transaction() as session:
        await session.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {PROBE_ROLE}"))
        await session.execute(text(f"REVOKE USAGE ON SCHEMA public FROM {PROBE_ROLE}"))
        await session.execute(text(f"DROP ROLE {PROBE_ROLE}"))


async def test_stats_without_a_window_never_read_the_history_table(
    database_url: str, rollups_only_url: str, clean_db: Database
) -> None:
    await add_artist(clean_db, "Probe Drummer", "cached")
    async with analytics_server(
        database_url, POSTGRES_READONLY_DATABASE_URL=rollups_only_url
    ) as probe:
        for i in range(20):
            await probe.RecordGeneration(request(time_ms=i * 10), timeout=10)
        reply = await probe.GetStats(pb.GetStatsRequest(), timeout=10)
        assert reply.total_generations == 20 and reply.cached_artists == 1
        # Whole buckets only: still no raw rows.
        aligned = pb.GetStatsRequest(
            since=_ts(datetime(2000, 1, 1, tzinfo=UTC)), until=_ts(datetime(2100, 1, 1, tzinfo=UTC))
        )
        assert (await probe.GetStats(aligned, timeout=10)).total_generations == 20
        # A partial minute at an edge is read from the raw rows, which this role cannot.
        edge = pb.GetStatsRequest(since=_ts(datetime(2000, 1, 1, 0, 0, 30, tzinfo=UTC)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await probe.GetStats(edge, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL


BASE = datetime(2025, 12, 31, 23, 59, 0, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
# Instants on and around minute, hour, day, month and year boundaries.
MARKS = [
    BASE - timedelta(days=40),
    BASE - timedelta(days=1, hours=3, minutes=7, seconds=5),
    BASE - timedelta(hours=1) - MICRO,
    BASE - timedelta(hours=1),
    BASE - MICRO,
    BASE,
    BASE + timedelta(seconds=59, microseconds=999_999),
    BASE + timedelta(minutes=1) - MICRO,
    BASE + timedelta(minutes=1),
    BASE + timedelta(minutes=1) + MICRO,
    BASE + timedelta(minutes=61, seconds=30),
    BASE + timedelta(days=1, minutes=1),
    BASE + timedelta(days=33, hours=2),
]


@pytest.fixture
async def spread(clean_db: Database) -> Database:
    """Rows on every mark and at random instants between the first and the last."""
    rng = random.Random(11)
    span = (MARKS[-1] - MARKS[0]).total_seconds()
    instants = [*MARKS, *(MARKS[0] + timedelta(seconds=rng.uniform(0, span)) for _ in range(400))]
    artist_id = await add_artist(clean_db, "Window Drummer")
    await insert_rows(
        clean_db,
        [
            {
                "artist_id": artist_id if i % 2 else None,
                "provider": rng.choice(PROVIDERS),
                "time_ms": rng.randrange(0, 20_000),
                "tokens": rng.randrange(0, 100),
                "cost": rng.uniform(0, 1),
                "created_at": at,
            }
            for i, at in enumerate(instants)
        ],
    )
    await delete_artist(clean_db, "Window Drummer")
    return clean_db


WINDOWS = [
    (MARKS[i], MARKS[j])
    for i in range(len(MARKS))
    for j in range(i, len(MARKS))
    if (i + j) % 3 == 0
] + [(None, MARKS[5]), (MARKS[5], None), (MARKS[3], MARKS[3])]


async def test_windows_match_raw_aggregates_inclusive_since_exclusive_until(
    stub: Stub, spread: Database
) -> None:
    for since, until in WINDOWS:
        message = pb.GetStatsRequest()
        where, params = ["true"], {}
        if since is not None:
            message.since.CopyFrom(_ts(since))
            where.append("created_at >= :since")
            params["since"] = since
        if until is not None:
            message.until.CopyFrom(_ts(until))
            where.append("created_at < :until")
            params["until"] = until
        reply = await stub.GetStats(message, timeout=10)
        expected = await truth(spread, " AND ".join(where), params)
        assert_matches(reply, expected)


async def test_window_bounds_with_nanoseconds_round_like_the_microsecond_rows(
    stub: Stub, spread: Database
) -> None:
    edge = MARKS[5]
    since = _ts(edge - MICRO)
    since.nanos += 1  # just after the row at edge - 1 us, so that row is outside
    until = _ts(edge)
    until.nanos += 1  # just after the row at edge, so that row is inside
    reply = await stub.GetStats(pb.GetStatsRequest(since=since, until=until), timeout=10)
    assert reply.total_generations == 1


async def test_window_with_until_before_since_is_invalid(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetStats(
            pb.GetStatsRequest(since=_ts(MARKS[5]), until=_ts(MARKS[4])), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
