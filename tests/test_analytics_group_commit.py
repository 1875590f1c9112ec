"""Group commit's batches: one caller's short deadline, each caller's own trace, its settings."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from services.analytics.app import Settings
from shared.db.engine import Database
from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from tests.analytics_support import add_artist, analytics_server
from tests.analytics_support import request as generation_request
from tests.harness import ServiceProcess, service_env
from tests.otlp_spans import read_spans

WRITERS = 4  # the default ANALYTICS_RECORD_WRITERS


async def _hold_lock(db: Database, name: str, release: asyncio.Event) -> None:
    """Lock the artist's row so inserts naming it wait (their foreign key check) until release."""
    async with db.transaction() as session:
        await session.execute(
            text("SELECT id FROM artists WHERE name = :n FOR UPDATE"), {"n": name}
        )
        await release.wait()


async def test_one_short_deadline_does_not_fail_the_rest_of_its_batch(
    database_url: str, db: Database
) -> None:
    """WRITERS records wait on one lock, so 21 more queue and are taken as one batch, which
    then waits on a second lock past the deadline of one of them (1.5 s). The others (30 s)
    must be written; only the short one answers DEADLINE_EXCEEDED."""
    busy, batched = f"Busy {uuid.uuid4()}", f"Batched {uuid.uuid4()}"
    await add_artist(db, busy)
    await add_artist(db, batched)
    release_busy, release_batched = asyncio.Event(), asyncio.Event()
    locks = [
        asyncio.create_task(_hold_lock(db, busy, release_busy)),
        asyncio.create_task(_hold_lock(db, batched, release_batched)),
    ]
    await asyncio.sleep(0.3)
    async with analytics_server(database_url) as stub:

        async def call(artist: str, seconds: float) -> str:
            try:
                await stub.RecordGeneration(generation_request(artist=artist), timeout=seconds)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        blockers = [asyncio.create_task(call(busy, 30)) for _ in range(WRITERS)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        short = asyncio.create_task(call(batched, 1.5))
        others = [asyncio.create_task(call(batched, 30)) for _ in range(20)]
        await asyncio.sleep(0.3)
        release_busy.set()
        # Well past the short deadline: the batch's statement is waiting on the lock.
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        release_batched.set()
        codes = await asyncio.gather(*others)
        short_code = await short
        assert set(await asyncio.gather(*blockers)) == {"OK"}
    await asyncio.gather(*locks)
    print(
        f"a batch of 21 with one 1.5 s deadline, held 3 s on a lock: short caller {short_code},"
        f" the 20 others {sorted((c, codes.count(c)) for c in set(codes))}"
    )
    assert codes == ["OK"] * 20
    assert short_code == "DEADLINE_EXCEEDED"


@pytest.fixture
async def traced(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    spans = tmp_path / "analytics.spans.jsonl"
    env = service_env(
        database_url, {"OTEL_TRACES_EXPORTER": "file", "STYLEBASE_TRACES_FILE": str(spans)}
    )
    process = ServiceProcess("analytics", env, log_path=tmp_path / "analytics.log").start()
    try:
        yield spans, process.target
    finally:
        process.stop()


def _read_spans(path: Path) -> list[dict[str, object]]:
    return read_spans(path)


async def test_each_record_insert_is_in_its_own_callers_trace(
    traced: tuple[Path, str],
) -> None:
    """Writer tasks started by the first call must not keep its trace for later calls."""
    spans_path, target = traced
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AnalyticsServiceStub(channel)
        for _ in range(3):
            await stub.RecordGeneration(generation_request())
    deadline = time.monotonic() + 20
    while True:
        spans = _read_spans(spans_path)
        servers = [
            s for s in spans if s["kind"] == "SERVER" and "RecordGeneration" in str(s["name"])
        ]
        inserts = [s for s in spans if s["name"] == "INSERT generation_history"]
        if (len(servers) >= 3 and len(inserts) >= 3) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    traces = {s["trace_id"] for s in servers}
    per_trace = {t: sum(1 for s in inserts if s["trace_id"] == t) for t in traces}
    print(f"INSERT spans per RecordGeneration trace: {sorted(per_trace.values())}")
    assert len(traces) == 3
    assert sorted(per_trace.values()) == [1, 1, 1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ANALYTICS_RECORD_WRITERS", "0"),
        ("ANALYTICS_RECORD_WRITERS", "65"),
        ("ANALYTICS_RECORD_BATCH_MAX", "0"),
        ("ANALYTICS_RECORD_BATCH_MAX", "1001"),
    ],
)
def test_group_commit_settings_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.lower()):
        Settings()


def test_group_commit_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANALYTICS_RECORD_WRITERS", "2")
    monkeypatch.setenv("ANALYTICS_RECORD_BATCH_MAX", "64")
    settings = Settings()
    assert (settings.analytics_record_writers, settings.analytics_record_batch_max) == (2, 64)
