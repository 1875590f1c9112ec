"""Bulk load of generation history with generate_series, rollups built set-based to match."""

from __future__ import annotations

import importlib
import uuid

import asyncpg

MIGRATION = importlib.import_module(
    "shared.migrations.versions.c2e1d3b8f5a6_analytics_rollups_and_readonly_role"
)
PROVIDERS = ["anthropic", "google", "openai", "template"]
CHUNK = 1_000_000

# A year of history ending now, in created_at order; ids are time-ordered (uuidv7) like
# the service's. Times are log-normal-ish around 1.5 s, 10 % of rows have no artist.
INSERT_CHUNK = """
INSERT INTO generation_history (id, artist_id, provider_used, generation_time_ms, tokens_used,
                                cost_usd, user_params, output_files, created_at)
SELECT uuidv7(s.ts - now()),
       CASE WHEN random() < 0.1 THEN NULL
            ELSE ($3::uuid[])[1 + floor(random() * cardinality($3::uuid[]))::int] END,
       ($4::text[])[1 + floor(random() * cardinality($4::text[]))::int],
       greatest(0, exp(7.3 + 0.6 * (random() + random() + random() - 1.5) * 2))::int,
       (random() * 4000)::bigint,
       round((random() * 0.05)::numeric, 6)::double precision,
       '{"bars": 8, "tempo": 120.0, "time_signature": "4/4", "variations": 2}'::jsonb,
       '["out/pattern.mid"]'::jsonb,
       s.ts
FROM (SELECT now() - interval '365 days' + g * (interval '365 days' / $5::bigint) AS ts
      FROM generate_series($1::bigint, $2::bigint) AS g) s
"""


async def prepare_server(conn: asyncpg.Connection) -> None:
    """Settings for a bulk load on this machine; applied by the restart that follows."""
    for setting, value in (
        ("shared_buffers", "4GB"),
        ("maintenance_work_mem", "1GB"),
        ("work_mem", "256MB"),
        ("max_wal_size", "16GB"),
        ("checkpoint_timeout", "30min"),
        ("effective_cache_size", "16GB"),
    ):
        await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")


async def load(conn: asyncpg.Connection, rows: int, artists: int) -> list[str]:
    """Empty the history, then load rows and their rollups; returns the artist names."""
    await conn.execute(
        "TRUNCATE generation_history, generation_rollups, generation_rollup_histogram,"
        " artist_generation_counts, artists CASCADE"
    )
    names = [f"Bench Drummer {i:05d}" for i in range(artists)]
    ids = [uuid.uuid4() for _ in names]
    await conn.copy_records_to_table(
        "artists",
        columns=["id", "name", "research_status"],
        records=[
            (i, n, "cached" if k % 3 == 0 else "pending")
            for k, (i, n) in enumerate(zip(ids, names, strict=True))
        ],
    )
    # The statement triggers would do the same per chunk; one set-based pass is quicker.
    await conn.execute("ALTER TABLE generation_history DISABLE TRIGGER USER")
    try:
        for low in range(1, rows + 1, CHUNK):
            high = min(rows, low + CHUNK - 1)
            await conn.execute(INSERT_CHUNK, low, high, ids, PROVIDERS, rows)
        async with conn.transaction():
            for statement in MIGRATION.BACKFILL:
                await conn.execute(statement)
    finally:
        await conn.execute("ALTER TABLE generation_history ENABLE TRIGGER USER")
    await conn.execute(
        "VACUUM ANALYZE generation_history, generation_rollups, generation_rollup_histogram,"
        " artist_generation_counts, artists"
    )
    return names
