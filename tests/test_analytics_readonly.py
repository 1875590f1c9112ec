"""The read-only role the migrations create: writes refused, reads served through it."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.settings import to_libpq_url
from stylebase.analytics.v1 import analytics_service_pb2 as pb
from tests.analytics_support import add_artist, analytics_server, request

ROLE = "stylebase_readonly"


def _readonly_url(database_url: str) -> str:
    user, rest = database_url.split("://", 1)[1].split("@", 1)
    assert user == "postgres"
    return f"postgresql+asyncpg://{ROLE}@{rest}"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO generation_history (id, provider_used, generation_time_ms, user_params)"
        " VALUES (gen_random_uuid(), 'openai', 1, '{}')",
        "UPDATE generation_rollups SET generations = generations + 1",
        "DELETE FROM artists",
        "INSERT INTO artist_generation_counts VALUES (gen_random_uuid(), 1)",
        "CREATE TABLE readonly_probe (id int)",
    ],
)
async def test_writes_through_the_readonly_role_are_refused(
    database_url: str, statement: str
) -> None:
    conn = await asyncpg.connect(to_libpq_url(_readonly_url(database_url)))
    try:
        assert await conn.fetchval("SELECT current_user") == ROLE
        assert await conn.fetchval("SELECT count(*) >= 0 FROM generation_history")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_stats_and_history_read_through_the_readonly_role(
    database_url: str, clean_db: Database
) -> None:
    await add_artist(clean_db, "Jeff Porcaro", "cached")
    extra = {"POSTGRES_READONLY_DATABASE_URL": _readonly_url(database_url)}
    async with analytics_server(database_url, **extra) as stub:
        # Writes still go through the owner role.
        await stub.RecordGeneration(request(artist="Jeff Porcaro"), timeout=10)
        stats = await stub.GetStats(pb.GetStatsRequest(), timeout=10)
        history = await stub.GetArtistHistory(
            pb.GetArtistHistoryRequest(artist_name="Jeff Porcaro"), timeout=10
        )
        async with clean_db.transaction() as session:
            readers = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE usename = :role AND application_name = 'analytics'"
                ),
                {"role": ROLE},
            )
    assert stats.total_generations == 1 and stats.cached_artists == 1
    assert history.total_generations == 1
    assert readers and readers >= 1
