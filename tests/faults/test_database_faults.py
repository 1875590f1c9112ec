"""The database path under faults, against real service processes and PostgreSQL: deadlines
under a table lock (pool cap, statements left running), PostgreSQL stopped and crashed under
mixed load (status codes, acknowledged writes)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_libpq_url
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from tests.faults.database_support import (
    ALLOWED,
    POOL_CAP,
    Sampler,
    Services,
    check_writes,
    code_of,
    mixed_load,
    pg_ctl,
    seed_profiles,
    services,
    serving,
)
from tests.profile_store_support import embedding, profile

__all__ = ["services"]  # the module's fixture


async def _table_lock(
    services: Services, database_url: str, *, clients: int, load_seconds: float
) -> None:
    url = to_libpq_url(database_url)
    names = await seed_profiles(services, 3)
    vector = embedding(7)
    exact = similarity_pb.SearchOptions(exact=True)
    # Through both paths: fetch (the default index scan, the profile read) and sessions (an
    # exact search, a save).
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: services.similarity.FindSimilarArtists(
            similarity_pb.FindSimilarArtistsRequest(artist_name=names[0], limit=5, options=exact),
            timeout=3,
        ),
        lambda: services.store.SaveStyleProfile(
            store_pb.SaveStyleProfileRequest(profile=profile(names[2])), timeout=3
        ),
        lambda: services.similarity.SearchByEmbedding(
            similarity_pb.SearchByEmbeddingRequest(embedding=vector, limit=5), timeout=3
        ),
        lambda: services.store.GetStyleProfile(
            store_pb.GetStyleProfileRequest(artist_name=names[1]), timeout=3
        ),
    ]
    codes: collections.Counter[grpc.StatusCode] = collections.Counter()
    sampler = Sampler(url, ("similarity", "profile_store"))
    holder = await asyncpg.connect(url, server_settings={"application_name": "lock-holder"})
    lock = holder.transaction()
    await lock.start()
    await holder.execute("LOCK TABLE style_profiles IN ACCESS EXCLUSIVE MODE")
    locked_at = time.monotonic()
    sampler.start()
    try:
        stop_at = time.monotonic() + load_seconds

        async def client(i: int) -> None:
            n = i
            while time.monotonic() < stop_at:
                codes[await code_of(calls[n % len(calls)]())] += 1
                n += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        gave_up = time.monotonic()
        await asyncio.sleep(1.0)
        leftover, statements = await sampler.active()
        held = time.monotonic() - locked_at
    finally:
        await lock.rollback()
        await holder.close()
        await sampler.stop()
    after = collections.Counter([await code_of(call()) for call in calls for _ in range(3)])
    print(
        f"\ntable lock: {clients} clients, lock held {held:.1f} s (callers gave up at"
        f" {gave_up - locked_at:.1f} s), calls by code"
        f" {{{', '.join(f'{c.name}: {n}' for c, n in codes.most_common())}}},"
        f" max backends {dict(sampler.max_backends)} vs cap {POOL_CAP} each,"
        f" statements still active 1 s after the callers gave up {leftover},"
        f" {sampler.samples} samples; afterwards {dict((c.name, n) for c, n in after.items())}"
    )
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert max(sampler.max_backends.values()) <= POOL_CAP
    assert sum(leftover.values()) == 0, statements
    assert after == {grpc.StatusCode.OK: len(calls) * 3}


async def test_a_table_lock_leaves_no_statement_running_and_keeps_the_pool_cap(
    services: Services, database_url: str
) -> None:
    await _table_lock(services, database_url, clients=40, load_seconds=2.0)


@pytest.mark.faults
async def test_a_long_table_lock_under_200_calls_keeps_the_pool_cap(
    services: Services, database_url: str
) -> None:
    await _table_lock(services, database_url, clients=200, load_seconds=36.0)


async def _restart(
    services: Services,
    postgres: EmbeddedPostgres,
    database_url: str,
    *,
    mode: str,
    clients: int,
    before: float,
    down: float,
    after: float,
) -> None:
    phase = {"stop": False}
    stopped_at: list[float] = []

    async def fault() -> None:
        await asyncio.sleep(before)
        await pg_ctl(postgres, f"stop({mode!r})")
        stopped_at.append(time.monotonic())
        await asyncio.sleep(down)
        await pg_ctl(postgres, "start()")
        await asyncio.sleep(after)
        phase["stop"] = True

    try:
        load = asyncio.create_task(
            mixed_load(services, clients=clients, until=lambda: phase["stop"])
        )
        await fault()
        codes, acked = await load
    finally:
        if not postgres._running():
            postgres.start()
    healthy = {
        name: await serving(process.target, 30) for name, process in services.processes.items()
    }
    writes, lost, twice = await check_writes(database_url, acked)
    by_code = collections.Counter[str]()
    for (_, code), n in codes.items():
        by_code[code] += n
    print(
        f"\nPostgreSQL {mode} stop, down {down:.0f} s, {clients} clients: calls by code"
        f" {dict(by_code)}; by call {dict(sorted(codes.items()))};"
        f" writes acknowledged {writes}, lost {lost}, applied twice {twice};"
        f" serving again {healthy}"
    )
    assert set(by_code) <= {c.name for c in ALLOWED}
    assert lost == 0 and twice == 0
    assert all(healthy.values())
    assert by_code["OK"] > 0


async def test_a_fast_stop_of_postgresql_gives_only_retryable_codes_and_exact_writes(
    services: Services, postgres: EmbeddedPostgres, database_url: str
) -> None:
    await _restart(
        services, postgres, database_url, mode="fast", clients=6, before=1.5, down=2.0, after=2.0
    )


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgresql_stop_and_crash_under_mixed_load(
    services: Services, postgres: EmbeddedPostgres, database_url: str, mode: str
) -> None:
    await _restart(
        services, postgres, database_url, mode=mode, clients=16, before=5.0, down=5.0, after=8.0
    )
