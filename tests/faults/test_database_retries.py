"""Units of work whose connection is lost: never written twice after COMMIT was sent, reads
retried, and every loss (a terminated backend, a server out of slots) UNAVAILABLE."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import Database
from shared.embedded.postgres import EmbeddedPostgres
from shared.errors import Unavailable
from shared.settings import ServiceSettings
from tests.faults.proxy import FaultProxy


async def _artist_id(db: Database) -> uuid.UUID:
    artist = uuid.uuid4()

    async def work(session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO artists (id, name) VALUES (:id, :name)"),
            {"id": artist, "name": f"Commit {artist.hex[:10]}"},
        )

    await db.run(work)
    return artist


async def test_a_connection_lost_after_commit_is_never_written_twice(
    db: Database, postgres: EmbeddedPostgres, database_url: str
) -> None:
    proxy = FaultProxy(postgres.port).start()
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=database_url.replace(f":{postgres.port}/", f":{proxy.port}/"),
        db_pool_size=2,
    )
    through = Database.connect(settings, application_name="commit-cut")
    artist = await _artist_id(db)
    outcomes: collections.Counter[str] = collections.Counter()
    rows: collections.Counter[int] = collections.Counter()
    try:
        for _ in range(5):
            url = f"https://example.org/{uuid.uuid4().hex}"

            async def add(session: AsyncSession, url: str = url) -> None:
                await session.execute(
                    text(
                        "INSERT INTO research_sources (id, artist_id, source_type, url, confidence,"
                        " collected_at) VALUES (gen_random_uuid(), :a, 'paper', :u, 0.5, now())"
                    ),
                    {"a": artist, "u": url},
                )

            fired = proxy.cut_on(b"COMMIT", linger=0.3)
            try:
                await through.run(add, time_left=10)
                outcomes["OK"] += 1
            except Unavailable:
                outcomes["UNAVAILABLE"] += 1
            assert fired.is_set()
            found = await db.fetch("SELECT count(*) AS n FROM research_sources WHERE url = $1", url)
            rows[found[0]["n"]] += 1
        # A read may be retried after any loss: it comes back with its rows.
        proxy.cut_on(b"SELECT 41", linger=0.1)
        rows_read = await through.fetch("SELECT 41 + 1 AS n")

        async def read(session: AsyncSession) -> int:
            return int((await session.execute(text("SELECT 41 + 2"))).scalar_one())

        proxy.cut_on(b"SELECT 41", linger=0.1)
        session_read = await through.run(read, idempotent=True)
    finally:
        await through.dispose()
        proxy.stop()
    print(
        f"\ncut after COMMIT, 5 writes: outcomes {dict(outcomes)}, rows per write {dict(rows)};"
        f" reads cut mid-statement came back {rows_read[0]['n']}, {session_read}"
    )
    assert 2 not in rows and rows[1] + rows[0] == 5
    # A write that answered OK is there exactly once.
    assert outcomes["OK"] <= rows[1]
    assert rows_read[0]["n"] == 42 and session_read == 43


async def _terminate_backend_of(db: Database, application_name: str) -> None:
    """pg_terminate_backend (as a fast stop does to every backend) of the first statement of
    application_name seen running."""
    for _ in range(500):
        rows = await db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            " AND state = 'active' AND query LIKE '%pg_sleep%'",
            application_name,
        )
        if rows:
            await db.fetch("SELECT pg_terminate_backend($1)", rows[0]["pid"])
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no statement of {application_name} was seen running")


async def _outcome(call: Awaitable[Any]) -> str:
    try:
        await call
    except Exception as exc:
        return type(exc).__name__
    return "OK"


async def test_a_backend_terminated_mid_statement_is_unavailable_and_reads_are_retried(
    db: Database, database_url: str
) -> None:
    settings = ServiceSettings(POSTGRES_DATABASE_URL=database_url, db_pool_size=2)
    victim = Database.connect(settings, application_name="terminated")

    async def sleep_in_session(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(1)"))

    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "fetch, not idempotent": lambda: victim.fetch("SELECT pg_sleep(1)", idempotent=False),
        "run, a write": lambda: victim.run(sleep_in_session),
        "fetch of a SELECT": lambda: victim.fetch("SELECT pg_sleep(1)"),
        "run, idempotent": lambda: victim.run(sleep_in_session, idempotent=True),
    }
    outcomes: dict[str, str] = {}
    try:
        for case, call in cases.items():
            task = asyncio.ensure_future(_outcome(call()))
            await _terminate_backend_of(db, "terminated")
            outcomes[case] = await task
    finally:
        await victim.dispose()
    print(f"\nbackend terminated mid-statement (57P01): {outcomes}")
    assert outcomes == {
        "fetch, not idempotent": "Unavailable",
        "run, a write": "Unavailable",
        "fetch of a SELECT": "OK",
        "run, idempotent": "OK",
    }


async def test_a_server_out_of_connection_slots_is_unavailable_on_both_paths(
    db: Database, database_url: str
) -> None:
    async with db.transaction() as session:
        await session.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'no_slots')"
                " THEN CREATE ROLE no_slots LOGIN CONNECTION LIMIT 0; END IF; END $$"
            )
        )
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=database_url.replace("//postgres@", "//no_slots@"), db_pool_size=2
    )
    full = Database.connect(settings, application_name="no-slots")

    async def select_one(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    try:
        outcomes = {
            "fetch": await _outcome(full.fetch("SELECT 1")),
            "run": await _outcome(full.run(select_one)),
        }
    finally:
        await full.dispose()
    print(f"\ntoo many connections (53300): {outcomes}")
    assert outcomes == {"fetch": "NotSent", "run": "NotSent"}
