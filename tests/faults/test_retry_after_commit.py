"""A connection lost after COMMIT was sent: the retry with the same request_id writes nothing.

Each service runs as its own process with its database URL through a FaultProxy. The proxy
forwards the COMMIT (or the single-statement INSERT) to PostgreSQL, swallows the answer while
PostgreSQL commits, and resets the connection, so the write is stored but its caller never
hears so. The client retries with the same request_id until OK; then the rows are counted.
The service's request_log_replays_total proves the cut landed on the write (and not on an
unrelated connection such as a readiness ping): the retry was answered from the request log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import text

from shared.db.engine import Database
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from tests.analytics_support import add_artist
from tests.analytics_support import request as generation_request
from tests.faults.proxy import FaultProxy
from tests.harness import ServiceProcess, service_env

if TYPE_CHECKING:
    StoreStub = store_grpc.ProfileStoreServiceAsyncStub
    AnalyticsStub = analytics_grpc.AnalyticsServiceAsyncStub
else:
    StoreStub = store_grpc.ProfileStoreServiceStub
    AnalyticsStub = analytics_grpc.AnalyticsServiceStub

M = TypeVar("M", bound=Message)
COMMIT = b"COMMIT"
# Long enough for PostgreSQL to finish the commit before the connection is reset.
LINGER = 0.5
ROUNDS = 3
ATTEMPTS = 8
# Codes a client may see for a call whose connection was cut: retry it.
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@dataclass
class Served:
    process: ServiceProcess
    proxy: FaultProxy
    metrics_port: int
    channel: grpc.aio.Channel | None = None

    def replays(self, rpc: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
        prefix = f'request_log_replays_total{{rpc="{rpc}"}} '
        lines = body.splitlines()
        return sum(float(line[len(prefix) :]) for line in lines if line.startswith(prefix))


def _serve(
    service: str, postgres: EmbeddedPostgres, database_url: str, tmp: Path, extra: dict[str, str]
) -> Served:
    proxy = FaultProxy(postgres.port).start()
    url = database_url.replace(f":{postgres.port}/", f":{proxy.port}/")
    metrics_port = free_port()
    env = service_env(
        url,
        {
            f"{service.upper()}_METRICS_PORT": str(metrics_port),
            "DB_POOL_PRE_PING": "true",
            "LOG_LEVEL": "INFO",
            **extra,
        },
    )
    process = ServiceProcess(service, env, log_path=tmp / f"{service}.log").start()
    return Served(process, proxy, metrics_port)


@pytest.fixture(scope="module")
def store_process(
    postgres: EmbeddedPostgres, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    extra = {
        # No gateway listens there: saves answer cache_invalidated false at once, and the relay
        # (whose COMMITs would take the cut) waits a minute between rounds.
        "CACHE_GATEWAY_TARGET": f"127.0.0.1:{free_port()}",
        "PROFILE_STORE_OUTBOX_INTERVAL_SECONDS": "60",
    }
    served = _serve("profile_store", postgres, database_url, tmp_path_factory.mktemp("ps"), extra)
    yield served
    served.process.stop()
    served.proxy.stop()


@pytest.fixture(scope="module")
def analytics_process(
    postgres: EmbeddedPostgres, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    served = _serve("analytics", postgres, database_url, tmp_path_factory.mktemp("an"), {})
    yield served
    served.process.stop()
    served.proxy.stop()


@pytest.fixture
async def store(store_process: Served) -> AsyncIterator[tuple[Served, StoreStub]]:
    async with grpc.aio.insecure_channel(store_process.process.target) as channel:
        yield store_process, store_grpc.ProfileStoreServiceStub(channel)


@pytest.fixture
async def analytics(analytics_process: Served) -> AsyncIterator[tuple[Served, AnalyticsStub]]:
    async with grpc.aio.insecure_channel(analytics_process.process.target) as channel:
        yield analytics_process, analytics_grpc.AnalyticsServiceStub(channel)


@dataclass
class Outcome:
    codes: list[str] = field(default_factory=list)
    answer: Any = None
    fired: bool = False

    @property
    def attempts(self) -> int:
        return len(self.codes)


async def _cut_then_retry(
    proxy: FaultProxy, call: Callable[[], Awaitable[M]], pattern: bytes = COMMIT
) -> Outcome:
    """Arm a one-shot cut on pattern, call, and retry the same call until it answers OK."""
    outcome = Outcome()
    fired = proxy.cut_on(pattern, linger=LINGER)
    for _ in range(ATTEMPTS):
        try:
            outcome.answer = await call()
        except grpc.aio.AioRpcError as exc:
            outcome.codes.append(exc.code().name)
            await asyncio.sleep(0.2)
            continue
        outcome.codes.append("OK")
        break
    outcome.fired = fired.is_set()
    return outcome


async def _scenario(
    served: Served,
    rpc: str,
    round_: Callable[[str], Awaitable[tuple[Outcome, int]]],
    *,
    want_rows: int = 1,
    pattern: bytes = COMMIT,
) -> None:
    """Up to ROUNDS rounds (a fresh request_id each) until one cut landed on the write; every
    round must end with exactly want_rows rows and no INTERNAL or UNKNOWN seen."""
    replays_before = served.replays(rpc)
    for n in range(1, ROUNDS + 1):
        outcome, rows = await round_(str(uuid.uuid4()))
        replayed = served.replays(rpc) - replays_before
        print(
            f"{rpc.rsplit('.', 1)[-1]}: cut on {pattern.decode()!r} round {n}: codes"
            f" {outcome.codes}, attempts {outcome.attempts}, rows {rows}, answered from the"
            f" request log {replayed:.0f}"
        )
        assert rows == want_rows
        assert outcome.codes[-1] == "OK", outcome.codes
        assert set(outcome.codes[:-1]) <= RETRYABLE, outcome.codes
        if outcome.fired and replayed > 0:
            return
    pytest.fail(f"no cut landed on a {rpc} write in {ROUNDS} rounds")


async def _scalar(db: Database, sql: str, **params: Any) -> Any:
    async with db.transaction() as session:
        return (await session.execute(text(sql), params)).scalar_one()


# -- the profile store ---------------------------------------------------------------------


async def test_add_research_source_cut_after_commit_stores_one_row(
    store: tuple[Served, StoreStub], db: Database
) -> None:
    served, stub = store
    name = f"Cut Source {uuid.uuid4()}"
    await stub.GetOrCreateArtist(store_pb.GetOrCreateArtistRequest(name=name))

    async def round_(request_id: str) -> tuple[Outcome, int]:
        url = f"https://example.com/{request_id}"
        request = store_pb.AddResearchSourceRequest(
            artist_name=name,
            source=common_pb2.ResearchSource(
                source_type=common_pb2.SOURCE_TYPE_ARTICLE, url=url, confidence=0.7
            ),
            request_id=request_id,
        )
        outcome = await _cut_then_retry(served.proxy, lambda: stub.AddResearchSource(request))
        rows = await _scalar(db, "SELECT count(*) FROM research_sources WHERE url = :u", u=url)
        if rows != 1 or outcome.answer is None:
            return outcome, rows
        stored = await _scalar(db, "SELECT id FROM research_sources WHERE url = :u", u=url)
        assert outcome.answer.source.id == str(stored)
        again = await stub.AddResearchSource(request)
        assert again.SerializeToString() == outcome.answer.SerializeToString()
        return outcome, rows

    await _scenario(served, store_pb.AddResearchSourceRequest.DESCRIPTOR.full_name, round_)


async def test_get_or_create_artist_cut_after_commit_still_says_created(
    store: tuple[Served, StoreStub], db: Database
) -> None:
    served, stub = store

    async def round_(request_id: str) -> tuple[Outcome, int]:
        name = f"Cut Artist {request_id}"
        request = store_pb.GetOrCreateArtistRequest(name=name, request_id=request_id)
        outcome = await _cut_then_retry(served.proxy, lambda: stub.GetOrCreateArtist(request))
        rows = await _scalar(db, "SELECT count(*) FROM artists WHERE name = :n", n=name)
        if outcome.answer is None:
            return outcome, rows
        stored = await _scalar(db, "SELECT id FROM artists WHERE name = :n", n=name)
        assert outcome.answer.artist.id == str(stored)
        # The first call created it; its answer, not a later "found", is what a retry gets.
        assert outcome.answer.created
        return outcome, rows

    await _scenario(served, store_pb.GetOrCreateArtistRequest.DESCRIPTOR.full_name, round_)


def _profile(name: str, description: str) -> common_pb2.StyleProfile:
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description=description,
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=80, tempo_max=100, tempo_avg=90, swing_percent=55
        ),
        confidence_score=0.8,
    )


@pytest.mark.parametrize("expected", ["new", "replace"])
async def test_save_profile_with_expected_version_cut_after_commit_saves_once(
    store: tuple[Served, StoreStub], db: Database, expected: str
) -> None:
    """expected_version 0 (create) and N (replace): the retry answers the first call's save,
    not ABORTED by it, and the stored version is the answer's."""
    served, stub = store

    async def round_(request_id: str) -> tuple[Outcome, int]:
        name = f"Cut Profile {request_id}"
        version = 0
        if expected == "replace":
            first = await stub.SaveStyleProfile(
                store_pb.SaveStyleProfileRequest(profile=_profile(name, "first"))
            )
            version = first.profile.version
        request = store_pb.SaveStyleProfileRequest(
            profile=_profile(name, f"saved by {request_id}"),
            expected_version=version,
            request_id=request_id,
        )
        outcome = await _cut_then_retry(served.proxy, lambda: stub.SaveStyleProfile(request))
        where = "FROM style_profiles p JOIN artists a ON a.id = p.artist_id WHERE a.name = :n"
        rows = await _scalar(db, f"SELECT count(*) {where}", n=name)
        if outcome.answer is None:
            return outcome, rows
        stored = await _scalar(db, f"SELECT p.version {where}", n=name)
        assert outcome.answer.profile.version == stored
        assert outcome.answer.profile.text_description == f"saved by {request_id}"
        if expected == "replace":
            assert stored > version
        return outcome, rows

    await _scenario(served, store_pb.SaveStyleProfileRequest.DESCRIPTOR.full_name, round_)


# -- analytics -----------------------------------------------------------------------------


async def test_record_generation_cut_after_commit_stores_one_row(
    analytics: tuple[Served, AnalyticsStub], db: Database
) -> None:
    served, stub = analytics
    name = f"Cut Generation {uuid.uuid4()}"
    await add_artist(db, name)

    async def round_(request_id: str) -> tuple[Outcome, int]:
        marker = f"out/{request_id}.mid"
        request = generation_request(artist=name, files=(marker,))
        request.request_id = request_id
        outcome = await _cut_then_retry(served.proxy, lambda: stub.RecordGeneration(request))
        rows = await _history_rows(db, marker)
        if rows != 1 or outcome.answer is None:
            return outcome, rows
        stored = await _scalar(
            db,
            "SELECT id FROM generation_history WHERE output_files @> CAST(:m AS jsonb)",
            m=json.dumps([marker]),
        )
        assert outcome.answer.generation.id == str(stored)
        again = await stub.RecordGeneration(request)
        assert again.SerializeToString() == outcome.answer.SerializeToString()
        return outcome, rows

    await _scenario(served, analytics_pb.RecordGenerationRequest.DESCRIPTOR.full_name, round_)


async def test_batch_record_generations_cut_after_commit_stores_each_row_once(
    analytics: tuple[Served, AnalyticsStub], db: Database
) -> None:
    served, stub = analytics

    async def round_(request_id: str) -> tuple[Outcome, int]:
        markers = [f"out/{request_id}-{i}.mid" for i in range(3)]
        request = analytics_pb.BatchRecordGenerationsRequest(
            generations=[generation_request(files=(m,)) for m in markers], request_id=request_id
        )
        outcome = await _cut_then_retry(served.proxy, lambda: stub.BatchRecordGenerations(request))
        rows = sum([await _history_rows(db, m) for m in markers])
        if outcome.answer is not None:
            assert len(outcome.answer.generations) == 3
        return outcome, rows

    await _scenario(
        served,
        analytics_pb.BatchRecordGenerationsRequest.DESCRIPTOR.full_name,
        round_,
        want_rows=3,
    )


async def test_record_generation_without_request_id_never_answers_internal_after_a_cut(
    analytics: tuple[Served, AnalyticsStub], db: Database
) -> None:
    """Without a request_id a cut INSERT may be written twice by the client's own retry, but
    the client never sees INTERNAL (the UniqueViolation of re-sending the same generation id).

    The group commit's INSERT is one statement, its own transaction, with no COMMIT text; the
    driver sends its SQL once per connection (prepared) and then only its parameters, so the
    cut fires on the marker, a parameter: that execution is forwarded and commits."""
    served, stub = analytics
    seen: list[str] = []
    rows = 0
    for _ in range(ROUNDS):
        marker = f"out/{uuid.uuid4()}.mid"
        call = functools.partial(stub.RecordGeneration, generation_request(files=(marker,)))
        outcome = await _cut_then_retry(served.proxy, call, marker.encode())
        found = await _history_rows(db, marker)
        seen.extend(outcome.codes)
        rows += found
        print(
            f"RecordGeneration without request_id, cut after its INSERT: codes {outcome.codes},"
            f" attempts {outcome.attempts}, rows {found}"
        )
        assert outcome.fired
        assert outcome.codes[-1] == "OK", outcome.codes
        assert set(outcome.codes[:-1]) <= RETRYABLE, outcome.codes
        assert 1 <= found <= outcome.attempts


async def test_batch_record_generations_without_request_id_never_answers_internal_after_a_cut(
    analytics: tuple[Served, AnalyticsStub], db: Database
) -> None:
    """The batch's transaction re-run after its COMMIT went unheard re-sends the same ids: it
    must answer from the rows it finds, not with the UniqueViolation as INTERNAL."""
    served, stub = analytics
    markers = [f"out/{uuid.uuid4()}.mid" for _ in range(3)]
    request = analytics_pb.BatchRecordGenerationsRequest(
        generations=[generation_request(files=(m,)) for m in markers]
    )
    outcome = await _cut_then_retry(served.proxy, lambda: stub.BatchRecordGenerations(request))
    rows = sum([await _history_rows(db, m) for m in markers])
    print(
        f"BatchRecordGenerations without request_id, cut on 'COMMIT': codes {outcome.codes},"
        f" attempts {outcome.attempts}, rows {rows}"
    )
    assert outcome.codes[-1] == "OK", outcome.codes
    assert set(outcome.codes[:-1]) <= RETRYABLE, outcome.codes
    assert 3 <= rows <= 3 * outcome.attempts


async def _history_rows(db: Database, marker: str) -> int:
    count: int = await _scalar(
        db,
        "SELECT count(*) FROM generation_history WHERE output_files @> CAST(:m AS jsonb)",
        m=json.dumps([marker]),
    )
    return count


# -- a long run: cuts at random moments under concurrent writers ----------------------------


@pytest.mark.faults
async def test_random_cuts_under_load_leave_one_row_per_request_id(
    analytics: tuple[Served, AnalyticsStub], store: tuple[Served, StoreStub], db: Database
) -> None:
    """Eight clients per service write with request ids, retrying until OK, while every
    database connection of both services is reset at random moments. Every request id must
    end with exactly one row, and the answer its client kept must name that row."""
    (analytics_served, recorder), (store_served, profiles) = analytics, store
    artist = f"Random Cuts {uuid.uuid4()}"
    await profiles.GetOrCreateArtist(store_pb.GetOrCreateArtistRequest(name=artist))
    codes: dict[str, int] = {}
    answers: dict[str, tuple[str, str]] = {}  # marker -> (table, id in the answer)
    stop = asyncio.Event()

    async def retry(call: Callable[[], Awaitable[M]]) -> M:
        # Every code is retried (and counted), so the rows tell whether a retry wrote twice
        # even when some code it should never see (INTERNAL) came back.
        for _ in range(20):
            try:
                answer = await call()
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                await asyncio.sleep(0.05)
                continue
            codes["OK"] = codes.get("OK", 0) + 1
            return answer
        raise AssertionError(f"no answer in 20 attempts; codes so far {codes}")

    async def record_client() -> None:
        while not stop.is_set():
            marker = f"out/{uuid.uuid4()}.mid"
            request = generation_request(files=(marker,))
            request.request_id = str(uuid.uuid4())
            reply = await retry(functools.partial(recorder.RecordGeneration, request, timeout=10))
            answers[marker] = ("generation_history", reply.generation.id)

    async def source_client() -> None:
        while not stop.is_set():
            url = f"https://example.com/{uuid.uuid4()}"
            request = store_pb.AddResearchSourceRequest(
                artist_name=artist,
                source=common_pb2.ResearchSource(source_type=common_pb2.SOURCE_TYPE_AUDIO, url=url),
                request_id=str(uuid.uuid4()),
            )
            reply = await retry(functools.partial(profiles.AddResearchSource, request, timeout=10))
            answers[url] = ("research_sources", reply.source.id)

    async def chaos(seconds: float) -> int:
        rng = random.Random(155)
        cuts, until = 0, asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < until:
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            cuts += analytics_served.proxy.cut() + store_served.proxy.cut()
        stop.set()
        return cuts

    clients = [record_client() for _ in range(8)] + [source_client() for _ in range(8)]
    cutting = asyncio.create_task(chaos(30.0))
    await asyncio.gather(*clients)
    cuts = await cutting
    duplicates = missing = wrong = 0
    async with db.transaction() as session:
        for marker, (table, answered) in answers.items():
            if table == "generation_history":
                sql = "SELECT id FROM generation_history WHERE output_files ? :m"
            else:
                sql = "SELECT id FROM research_sources WHERE url = :m"
            ids = [str(row.id) for row in await session.execute(text(sql), {"m": marker})]
            duplicates += len(ids) > 1
            missing += not ids
            wrong += ids != [answered]
    print(
        f"random cuts for 30 s: {cuts} connections reset, {len(answers)} writes with request"
        f" ids, codes {dict(sorted(codes.items()))}, request ids with 2+ rows {duplicates},"
        f" with none {missing}, answers naming another row {wrong}"
    )
    assert (duplicates, missing, wrong) == (0, 0, 0)
    assert cuts > 0
    assert set(codes) <= RETRYABLE | {"OK"}, codes
