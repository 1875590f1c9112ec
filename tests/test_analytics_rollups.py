"""The rollups the triggers keep: always a regrouping of the raw rows, whoever writes."""

from __future__ import annotations

import importlib
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared.db.engine import Database
from shared.settings import to_libpq_url
from tests.analytics_support import add_artist, delete_artist, insert_rows

MIGRATION = importlib.import_module(
    "shared.migrations.versions.c2e1d3b8f5a6_analytics_rollups_and_readonly_role"
)
# The rollups regrouped from raw rows by this test's own SQL (UTC buckets).
REGROUPED = """
SELECT level, bucket, provider_used, count(*), sum(generation_time_ms),
       sum(coalesce(cost_usd, 0)::numeric), sum(coalesce(tokens_used, 0))
FROM generation_history,
     LATERAL (VALUES ('minute', date_trunc('minute', created_at AT TIME ZONE 'UTC')),
                     ('hour', date_trunc('hour', created_at AT TIME ZONE 'UTC')),
                     ('day', date_trunc('day', created_at AT TIME ZONE 'UTC')),
                     ('month', date_trunc('month', created_at AT TIME ZONE 'UTC')),
                     ('all', NULL)) AS b(level, bucket)
GROUP BY 1, 2, 3
"""
STORED = """
SELECT level, CASE WHEN level = 'all' THEN NULL ELSE bucket_start AT TIME ZONE 'UTC' END,
       provider, generations, sum_time_ms, sum_cost_usd, sum_tokens
FROM generation_rollups WHERE generations <> 0
"""
HISTOGRAM_TOTALS = """
SELECT level, bucket_start, provider, sum(generations)
FROM generation_rollup_histogram GROUP BY 1, 2, 3 HAVING sum(generations) <> 0
"""
ROLLUP_COUNTS = "SELECT level, bucket_start, provider, generations FROM generation_rollups"
ROLLUP_COUNTS += " WHERE generations <> 0"


async def _assert_rollups_match(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("SET LOCAL TimeZone = 'America/New_York'"))
        regrouped = {tuple(r) for r in await session.execute(text(REGROUPED))}
        stored = {tuple(r) for r in await session.execute(text(STORED))}
        histogram = {tuple(r) for r in await session.execute(text(HISTOGRAM_TOTALS))}
        counts = {tuple(r) for r in await session.execute(text(ROLLUP_COUNTS))}
        artists = {
            tuple(r)
            for r in await session.execute(
                text("SELECT artist_id, generations FROM artist_generation_counts")
            )
        }
        artists_raw = {
            tuple(r)
            for r in await session.execute(
                text(
                    "SELECT artist_id, count(*) FROM generation_history"
                    " WHERE artist_id IS NOT NULL GROUP BY 1"
                )
            )
        }
    assert stored == regrouped
    assert histogram == counts
    assert {a for a in artists if a[1] != 0} == artists_raw


async def test_rollups_are_a_regrouping_of_raw_rows_after_any_kind_of_write(
    database_url: str, clean_db: Database
) -> None:
    rng = random.Random(3)
    a = await add_artist(clean_db, "Rollup One")
    b = await add_artist(clean_db, "Rollup Two")
    start = datetime(2026, 1, 31, 23, 58, tzinfo=UTC)

    def row(i: int) -> dict[str, object]:
        return {
            "artist_id": rng.choice([a, b, None]),
            "provider": rng.choice(["openai", "google", "template"]),
            "time_ms": rng.randrange(0, 10_000),
            "tokens": rng.choice([None, rng.randrange(0, 900)]),
            "cost": rng.choice([None, rng.uniform(0, 2)]),
            "created_at": start + timedelta(seconds=rng.uniform(0, 200)),
        }

    await insert_rows(clean_db, [row(i) for i in range(50)])
    async with clean_db.transaction() as session:
        # One multi-row statement from generate_series, as a bulk load writes.
        await session.execute(
            text(
                "INSERT INTO generation_history (id, artist_id, provider_used,"
                " generation_time_ms, tokens_used, cost_usd, user_params, created_at)"
                " SELECT gen_random_uuid(), CASE WHEN g % 2 = 0 THEN CAST(:a AS uuid) END,"
                " 'anthropic', g * 7, g, g / 100.0, '{}',"
                " CAST(:t AS timestamptz) + g * interval '1 second'"
                " FROM generate_series(1, 300) AS g"
            ),
            {"a": a, "t": start},
        )
    conn = await asyncpg.connect(to_libpq_url(database_url))
    try:
        await conn.copy_records_to_table(
            "generation_history",
            columns=["id", "artist_id", "provider_used", "generation_time_ms", "user_params"],
            records=[(uuid.uuid4(), b, "copy", i, "{}") for i in range(40)],
        )
    finally:
        await conn.close()
    await _assert_rollups_match(clean_db)

    async with clean_db.transaction() as session:
        await session.execute(text("DELETE FROM generation_history WHERE generation_time_ms < 900"))
    await delete_artist(clean_db, "Rollup Two")
    await _assert_rollups_match(clean_db)


async def test_history_measures_cannot_be_rewritten(clean_db: Database) -> None:
    await insert_rows(
        clean_db,
        [
            {
                "artist_id": None,
                "provider": "openai",
                "time_ms": 5,
                "tokens": 1,
                "cost": 0.5,
                "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        ],
    )
    with pytest.raises(DBAPIError, match="append-only"):
        async with clean_db.transaction() as session:
            await session.execute(text("UPDATE generation_history SET cost_usd = 0"))


async def test_truncating_history_empties_the_rollups(clean_db: Database) -> None:
    artist = await add_artist(clean_db, "Truncated")
    await insert_rows(
        clean_db,
        [
            {
                "artist_id": artist,
                "provider": "openai",
                "time_ms": 5,
                "tokens": 1,
                "cost": 0.5,
                "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        ],
    )
    async with clean_db.transaction() as session:
        await session.execute(text("TRUNCATE generation_history"))
        left = await session.scalar(
            text(
                "SELECT (SELECT count(*) FROM generation_rollups)"
                " + (SELECT count(*) FROM generation_rollup_histogram)"
                " + (SELECT count(*) FROM artist_generation_counts)"
            )
        )
    assert left == 0


async def test_set_based_backfill_builds_the_same_rollups_as_the_triggers(
    clean_db: Database,
) -> None:
    rng = random.Random(8)
    artist = await add_artist(clean_db, "Backfilled")
    start = datetime(2026, 2, 27, 22, 0, tzinfo=UTC)
    await insert_rows(
        clean_db,
        [
            {
                "artist_id": rng.choice([artist, None]),
                "provider": rng.choice(["openai", "google"]),
                "time_ms": rng.randrange(0, 50_000),
                "tokens": rng.randrange(0, 900),
                "cost": rng.uniform(0, 2),
                "created_at": start + timedelta(hours=rng.uniform(0, 72)),
            }
            for _ in range(120)
        ],
    )
    tables = ("generation_rollups", "generation_rollup_histogram", "artist_generation_counts")

    async def snapshot() -> list[set[tuple[object, ...]]]:
        async with clean_db.transaction() as session:
            return [
                {tuple(r) for r in await session.execute(text(f"SELECT * FROM {t}"))}
                for t in tables
            ]

    kept = await snapshot()
    async with clean_db.transaction() as session:
        for table in tables:
            await session.execute(text(f"DELETE FROM {table}"))
        for statement in MIGRATION.BACKFILL:
            await session.execute(text(statement))
    assert await snapshot() == kept
