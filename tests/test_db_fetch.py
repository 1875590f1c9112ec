"""Database.fetch, the one-round-trip read path: deadlines, errors and the pool it borrows from."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import asyncpg
import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.errors import DeadlineExceeded, Unavailable
from shared.metrics import DATABASE, registry
from shared.settings import ServiceSettings
from tests.faults.proxy import FaultProxy

REGISTRY = registry(DATABASE)


def _errors(operation: str, error_type: str) -> float:
    value = REGISTRY.get_sample_value(
        "db_query_errors_total",
        {"operation": operation, "error_type": error_type, "origin": "request"},
    )
    return value or 0.0


def _connect_errors() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "db_query_errors"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("operation") == "connect"
    )


async def test_rows_come_back_with_parameters_and_the_pool_gets_its_connection_back(
    db: Database,
) -> None:
    before = db.pool_status()["checked_out"]
    rows = await db.fetch("SELECT $1::int + 1 AS n, $2::text AS s", 41, "x")
    assert [(row["n"], row["s"]) for row in rows] == [(42, "x")]
    assert db.pool_status()["checked_out"] == before


async def test_a_statement_past_the_deadline_is_cancelled_on_the_server(
    db: Database, settings: ServiceSettings
) -> None:
    before = _errors("select", "TimeoutError")
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await db.fetch("SELECT pg_sleep(5)", time_left=0.2)
    assert _errors("select", "TimeoutError") == before + 1
    # Nothing of the cancelled statement is left running on the server.
    for _ in range(100):
        rows = await db.fetch(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'"
        )
        if rows[0]["n"] == 0:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the cancelled statement was still running")
    # The pool is whole: as many calls as it has connections, at once, all succeed.
    results = await asyncio.gather(
        *(db.fetch("SELECT 1 AS one") for _ in range(settings.db_pool_size))
    )
    assert all(rows[0]["one"] == 1 for rows in results)


async def test_an_expired_deadline_never_reaches_the_database(db: Database) -> None:
    with pytest.raises(DeadlineExceeded, match="before the database was reached"):
        await db.fetch("SELECT 1", time_left=0)


async def test_a_statement_error_is_the_driver_error_and_the_connection_stays_usable(
    db: Database,
) -> None:
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.fetch("SELECT * FROM no_such_table")
    assert (await db.fetch("SELECT 2 AS two"))[0]["two"] == 2


async def test_an_unreachable_database_is_unavailable() -> None:
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none",
        db_connect_timeout_seconds=1,
    )
    database = Database.connect(settings, application_name="tests-unreachable")
    before = _connect_errors()
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await database.fetch("SELECT 1")
        # Nothing was sent, so the connection was tried three times in all.
        assert _connect_errors() == before + 3
    finally:
        await database.dispose()


async def test_a_connection_the_server_closed_while_idle_is_replaced(db: Database) -> None:
    """fetch keeps a few connections between calls; one whose backend is gone is not reused."""
    pid = (await db.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"]
    async with db.transaction() as session:
        await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    for _ in range(100):  # the backend exits a moment after the signal
        async with db.transaction() as session:
            alive = await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        if not alive:
            break
        await asyncio.sleep(0.02)
    rows = await db.fetch("SELECT pg_backend_pid() AS pid")
    assert rows[0]["pid"] != pid


async def test_idle_connections_kept_by_fetch_count_as_idle(db: Database) -> None:
    await asyncio.gather(*(db.fetch("SELECT pg_sleep(0.05)") for _ in range(3)))
    status = db.pool_status()
    assert status["checked_out"] == 0
    assert status["idle"] >= 2


async def test_a_pool_of_one_is_never_held_by_fetch(database_url: str) -> None:
    """With one connection and no overflow, a session right after a fetch must get it."""
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=database_url,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout_seconds=1,
    )
    database = Database.connect(settings, application_name="tests-pool-of-one")
    try:
        await database.fetch("SELECT 1")
        async with database.transaction() as session:
            assert await session.scalar(text("SELECT 2")) == 2
    finally:
        await database.dispose()


async def test_a_slow_fetch_is_logged_with_its_plan(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServiceSettings(POSTGRES_DATABASE_URL=database_url, db_slow_query_ms=0)
    database = Database.connect(settings, application_name="tests-slow-fetch")
    caplog.set_level(logging.WARNING, logger="shared.db.engine")
    try:
        rows = await database.fetch("SELECT count(*) AS n FROM artists WHERE name = $1", "x")
        assert rows[0]["n"] == 0
    finally:
        await database.dispose()
    slow = [r for r in caplog.records if r.getMessage().startswith("slow query")]
    assert len(slow) == 1, [r.getMessage() for r in caplog.records]
    assert "artists" in slow[0].plan  # type: ignore[attr-defined]


async def test_a_fetch_cancelled_during_its_idle_ping_does_not_leak_its_connection(
    postgres: EmbeddedPostgres, database_url: str
) -> None:
    proxy = FaultProxy(postgres.port).start()
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=database_url.replace(f":{postgres.port}/", f":{proxy.port}/"),
        db_pool_size=2,
        db_max_overflow=0,
        db_pool_ping_idle_seconds=0,  # every borrow pings
        db_connect_timeout_seconds=1,
    )
    database = Database.connect(settings, application_name="tests-ping-cancel")
    try:
        await database.fetch("SELECT 1")  # now idle in the lane
        proxy.stall()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(database.fetch("SELECT 1"), 0.5)
            proxy.resume()
            for _ in range(200):
                if database.pool_status()["checked_out"] == 0:
                    break
                await asyncio.sleep(0.05)
            gc.collect()
        # A connection dropped without going back only returns when the garbage collector
        # finds it (SQLAlchemy warns then), and it is then closed without a cancel request.
        dropped = [w for w in caught if "garbage collector" in str(w.message)]
        status = database.pool_status()
        print(
            f"\nfetch cancelled in its idle ping: pool afterwards {status},"
            f" connections left to the garbage collector {len(dropped)}"
        )
        assert status["checked_out"] == 0
        assert dropped == []
        # Both connections of the pool are there to use at once.
        rows = await asyncio.gather(*(database.fetch("SELECT 1 AS one") for _ in range(2)))
        assert [r[0]["one"] for r in rows] == [1, 1]
    finally:
        proxy.resume()
        await database.dispose()
        proxy.stop()
