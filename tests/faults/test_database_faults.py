"""The database path under faults: deadlines under a table lock, PostgreSQL stops and crashes,
and connections lost after COMMIT was sent, against real service processes and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import Database
from shared.embedded.postgres import DATABASE, EmbeddedPostgres
from shared.errors import Unavailable
from shared.settings import ServiceSettings, to_libpq_url
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc
from tests.faults.proxy import FaultProxy
from tests.harness import ROOT, ServiceProcess, service_env
from tests.profile_store_support import embedding, profile

POOL_SIZE, MAX_OVERFLOW = 5, 5
POOL_CAP = POOL_SIZE + MAX_OVERFLOW
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
DB_SERVICES = ("profile_store", "similarity", "analytics")


@dataclass
class Services:
    processes: dict[str, ServiceProcess]
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self.channels:
            self.channels[service] = grpc.aio.insecure_channel(self.processes[service].target)
        return self.channels[service]

    @property
    def store(self) -> store_grpc.ProfileStoreServiceAsyncStub:
        return store_grpc.ProfileStoreServiceStub(self.channel("profile_store"))

    @property
    def similarity(self) -> similarity_grpc.SimilarityServiceAsyncStub:
        return similarity_grpc.SimilarityServiceStub(self.channel("similarity"))

    @property
    def analytics(self) -> analytics_grpc.AnalyticsServiceAsyncStub:
        return analytics_grpc.AnalyticsServiceStub(self.channel("analytics"))


@pytest.fixture(scope="module")
def services(
    database_url: str, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """The three database services (and the gateway) as processes, each with a small pool."""
    # The test server acknowledges commits before their WAL is written (synchronous_commit
    # off), which a crash loses; these tests count acknowledged writes, so commits here are
    # durable, as in production.
    postgres.psql(f'ALTER DATABASE "{DATABASE}" SET synchronous_commit = on')
    workdir: Path = tmp_path_factory.mktemp("database-faults")
    processes = {s: ServiceProcess(s, {}, log_path=workdir / f"{s}.log") for s in DB_SERVICES}
    gateway = ServiceProcess("cache_gateway", {}, log_path=workdir / "cache_gateway.log")
    for service, process in [*processes.items(), ("cache_gateway", gateway)]:
        process.env = service_env(
            database_url,
            {
                "DB_POOL_SIZE": str(POOL_SIZE),
                "DB_MAX_OVERFLOW": str(MAX_OVERFLOW),
                f"{service.upper()}_METRICS_PORT": "0",
                "CACHE_GATEWAY_TARGET": gateway.target,
                "PROFILE_STORE_TARGET": processes["profile_store"].target,
                "CACHE_INVALIDATION_TIMEOUT_MS": "500",
            },
        )
    started: list[ServiceProcess] = []
    try:
        for process in [*processes.values(), gateway]:
            started.append(process.start(timeout=60))
        yield Services({**processes, "cache_gateway": gateway})
    finally:
        for process in started:
            process.stop()
        postgres.psql(f'ALTER DATABASE "{DATABASE}" RESET synchronous_commit')


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _count(url: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def _serving(target: str, within: float) -> bool:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.2)
    return False


class Sampler:
    """pg_stat_activity every 50 ms: the most backends and active statements per service."""

    def __init__(self, url: str, names: tuple[str, ...]) -> None:
        self.url, self.names = url, names
        self.max_backends: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def now(self, conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, int]]:
        rows = await conn.fetch(
            "SELECT application_name AS app, count(*) AS n,"
            " count(*) FILTER (WHERE state = 'active') AS active"
            " FROM pg_stat_activity WHERE application_name = ANY($1::text[])"
            " GROUP BY application_name",
            list(self.names),
        )
        return {r["app"]: r["n"] for r in rows}, {r["app"]: r["active"] for r in rows}

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "sampler"})
        try:
            while True:
                backends, _ = await self.now(conn)
                for name, n in backends.items():
                    self.max_backends[name] = max(self.max_backends[name], n)
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def active(self) -> tuple[dict[str, int], list[str]]:
        """Active statements per service, and what each of them is."""
        conn = await asyncpg.connect(self.url, server_settings={"application_name": "sampler"})
        try:
            rows = await conn.fetch(
                "SELECT application_name, left(query, 60) AS query, wait_event_type,"
                " now() - query_start AS running FROM pg_stat_activity"
                " WHERE application_name = ANY($1::text[]) AND state = 'active'",
                list(self.names),
            )
            return (await self.now(conn))[1], [str(dict(row)) for row in rows]
        finally:
            await conn.close()

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _seed_profiles(services: Services, count: int) -> list[str]:
    names = [f"Lock {uuid.uuid4().hex[:10]}" for _ in range(count)]
    for name in names:
        await services.store.SaveStyleProfile(
            store_pb.SaveStyleProfileRequest(profile=profile(name)), timeout=30
        )
    return names


async def _table_lock(
    services: Services, database_url: str, *, clients: int, load_seconds: float
) -> None:
    url = to_libpq_url(database_url)
    names = await _seed_profiles(services, 3)
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
                codes[await _code(calls[n % len(calls)]())] += 1
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
    after = collections.Counter([await _code(call()) for call in calls for _ in range(3)])
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


@dataclass
class Acked:
    saves: dict[str, int] = field(default_factory=dict)  # artist name -> version
    sources: list[str] = field(default_factory=list)  # url
    generations: list[str] = field(default_factory=list)  # output file


async def _mixed_load(
    services: Services, *, clients: int, until: Callable[[], bool]
) -> tuple[collections.Counter[tuple[str, str]], Acked]:
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    acked = Acked()
    (known,) = await _seed_profiles(services, 1)

    async def one(kind: int) -> None:
        marker = uuid.uuid4().hex
        op = ""
        try:
            if kind == 0:
                op = "GetStyleProfile"
                await services.store.GetStyleProfile(
                    store_pb.GetStyleProfileRequest(artist_name=known), timeout=2
                )
            elif kind == 1:
                op = "SaveStyleProfile"
                name = f"Save {marker}"
                reply = await services.store.SaveStyleProfile(
                    store_pb.SaveStyleProfileRequest(profile=profile(name)), timeout=2
                )
                acked.saves[name] = reply.profile.version
            elif kind == 2:
                op = "AddResearchSource"
                url = f"https://example.org/{marker}"
                source = common_pb2.ResearchSource(
                    source_type=common_pb2.SOURCE_TYPE_PAPER, url=url
                )
                await services.store.AddResearchSource(
                    store_pb.AddResearchSourceRequest(artist_name=known, source=source), timeout=2
                )
                acked.sources.append(url)
            elif kind == 3:
                op = "RecordGeneration"
                out = f"out/{marker}.mid"
                await services.analytics.RecordGeneration(
                    analytics_pb.RecordGenerationRequest(
                        provider_used="template",
                        generation_time_ms=100,
                        tokens_used=1,
                        cost_usd=0.0,
                        user_params=analytics_pb.UserParams(
                            bars=8, tempo=120.0, time_signature="4/4", variations=1
                        ),
                        output_files=[out],
                    ),
                    timeout=2,
                )
                acked.generations.append(out)
            elif kind == 4:
                op = "FindSimilarArtists"
                await services.similarity.FindSimilarArtists(
                    similarity_pb.FindSimilarArtistsRequest(artist_name=known, limit=5), timeout=2
                )
            else:
                op = "GetStats"
                await services.analytics.GetStats(analytics_pb.GetStatsRequest(), timeout=2)
            codes[(op, "OK")] += 1
        except grpc.aio.AioRpcError as error:
            codes[(op, error.code().name)] += 1

    async def client(i: int) -> None:
        n = i
        while not until():
            await one(n % 6)
            n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return codes, acked


async def _check_writes(database_url: str, acked: Acked) -> tuple[int, int, int]:
    """(acknowledged, lost, applied twice) over every write the services answered OK."""
    url = to_libpq_url(database_url)
    lost = twice = 0
    conn = await asyncpg.connect(url)
    try:
        for name, version in acked.saves.items():
            found = await conn.fetch(
                "SELECT p.version FROM style_profiles p JOIN artists a ON a.id = p.artist_id"
                " WHERE a.name = $1",
                name,
            )
            lost += not found
            twice += len(found) > 1 or any(row["version"] != version for row in found)
        for source_url in acked.sources:
            n = await conn.fetchval(
                "SELECT count(*) FROM research_sources WHERE url = $1", source_url
            )
            lost += n == 0
            twice += n > 1
        for out in acked.generations:
            n = await conn.fetchval(
                "SELECT count(*) FROM generation_history WHERE output_files ? $1", out
            )
            lost += n == 0
            twice += n > 1
    finally:
        await conn.close()
    return len(acked.saves) + len(acked.sources) + len(acked.generations), lost, twice


async def _pg_ctl(postgres: EmbeddedPostgres, call: str) -> None:
    """Stop or start the session's PostgreSQL from a child process, so the clients keep running
    meanwhile (pg_ctl forked from a thread of this process, where gRPC runs, can crash before it
    execs)."""
    script = (
        "import pathlib; from shared.embedded.postgres import EmbeddedPostgres; "
        f"EmbeddedPostgres(pathlib.Path({str(postgres.pgdata)!r}), {postgres.port},"
        f" durable={postgres.durable}).{call}"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=ROOT)
    assert await child.wait() == 0, f"{call} of PostgreSQL failed"


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
        await _pg_ctl(postgres, f"stop({mode!r})")
        stopped_at.append(time.monotonic())
        await asyncio.sleep(down)
        await _pg_ctl(postgres, "start()")
        await asyncio.sleep(after)
        phase["stop"] = True

    try:
        load = asyncio.create_task(
            _mixed_load(services, clients=clients, until=lambda: phase["stop"])
        )
        await fault()
        codes, acked = await load
    finally:
        if not postgres._running():
            postgres.start()
    serving = {
        name: await _serving(process.target, 30) for name, process in services.processes.items()
    }
    writes, lost, twice = await _check_writes(database_url, acked)
    by_code = collections.Counter[str]()
    for (_, code), n in codes.items():
        by_code[code] += n
    print(
        f"\nPostgreSQL {mode} stop, down {down:.0f} s, {clients} clients: calls by code"
        f" {dict(by_code)}; by call {dict(sorted(codes.items()))};"
        f" writes acknowledged {writes}, lost {lost}, applied twice {twice};"
        f" serving again {serving}"
    )
    assert set(by_code) <= {c.name for c in ALLOWED}
    assert lost == 0 and twice == 0
    assert all(serving.values())
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


# In-process: the unit of work itself, through a proxy that cuts the connection after COMMIT.


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
