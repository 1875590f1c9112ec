"""Metrics, traces and logs as operators see them: scraped endpoints, exported spans, log lines."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id
from pydantic import ValidationError
from sqlalchemy import text

from shared.db.engine import Database, classify_statement
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.errors import InvalidArgument
from shared.grpc.channels import service_channel
from shared.grpc.server import LIVENESS, ServiceDefinition, start_server, stop_server
from shared.logging import JsonFormatter, request_id_var
from shared.metrics import DATABASE, GRPC_SERVER, registry
from shared.pending import PENDING_RPCS
from shared.settings import SERVICES, ObservabilitySettings, ServiceSettings
from stylebase.admin.v1 import admin_service_pb2 as admin_pb
from stylebase.admin.v1 import admin_service_pb2_grpc as admin_grpc
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc
from tests.observability_support import (
    FULL_NAMES,
    POOL_SIZE,
    PREFIX,
    Stack,
    families,
    parse,
    profile,
    running_stack,
    total,
    unit_vector,
)
from tests.observability_support import wait_for as _wait_for


@pytest.fixture(scope="module")
def stack(
    database_url: str,
    postgres: EmbeddedPostgres,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(
        database_url, postgres, redis_server, tmp_path_factory.mktemp("observability")
    ) as running:
        yield running


# ---------------------------------------------------------------- metrics over HTTP


# Some of the series each service serves (the whole table: test_observability_scope.py).
_GRPC = {"grpc_server_handled_total", "grpc_server_handling_seconds"}
SERVED = {
    "profile_store": _GRPC | {"db_query_duration_seconds", "db_style_profile_saves_total"},
    "similarity": _GRPC | {"db_similarity_searches_total", "similarity_index_recall"},
    "analytics": _GRPC | {"db_generation_history_saves_total", "db_query_errors_total"},
    "cache_gateway": _GRPC | {"db_cache_hit_rate", "cache_tier_requests_total"},
}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_serves_its_series_and_counts_every_rpc(stack: Stack, service: str) -> None:
    before = parse(stack.scrape(service))
    probe = f"/{FULL_NAMES[service]}/{_PROBE_METHOD[service]}"
    seen: dict[str, int] = {}
    with stack.channel(service) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        call = channel.unary_unary(probe, request_serializer=bytes, response_deserializer=bytes)
        for _ in range(2):
            try:
                call(b"", timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            seen[code.name] = seen.get(code.name, 0) + 1
    method = probe.rsplit("/", 1)[1]
    latency = {"grpc_service": FULL_NAMES[service], "grpc_method": method}
    # The server counts a call just after its status is sent: re-scrape until it has.
    for _ in range(50):
        exposition = stack.scrape(service)
        after = parse(exposition)
        counted = total(after, "grpc_server_handling_seconds_count", **latency)
        if counted >= total(before, "grpc_server_handling_seconds_count", **latency) + 2:
            break
        time.sleep(0.1)
    assert SERVED[service] <= families(exposition)
    # At least: the gateway's own readiness check also asks the store's health.
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    assert total(after, "grpc_server_handled_total", **health) >= (
        total(before, "grpc_server_handled_total", **health) + 1
    )
    for code_name, count in seen.items():
        labels = {
            "grpc_service": FULL_NAMES[service],
            "grpc_method": method,
            "grpc_code": code_name,
        }
        moved = total(after, "grpc_server_handled_total", **labels) - total(
            before, "grpc_server_handled_total", **labels
        )
        assert moved == count, (code_name, seen)
    assert total(after, "grpc_server_handling_seconds_count", **latency) == (
        total(before, "grpc_server_handling_seconds_count", **latency) + 2
    )
    if service != "cache_gateway":
        pool_size = total(after, "db_pool_size")
        assert pool_size >= POOL_SIZE and pool_size % POOL_SIZE == 0


@pytest.mark.parametrize("service", SERVICES)
def test_admin_rpc_reports_each_service_pools(stack: Stack, service: str) -> None:
    with stack.channel(service) as channel:
        reply = admin_grpc.AdminServiceStub(channel).GetPoolStats(
            admin_pb.GetPoolStatsRequest(), timeout=5
        )
    if service == "cache_gateway":
        assert list(reply.pools) == []
        return
    assert any(pool.name.startswith(service) for pool in reply.pools)
    for pool in reply.pools:
        assert pool.size == POOL_SIZE
        assert 0 <= pool.checked_out + pool.idle <= pool.size + pool.overflow


# One harmless method a service answers with an empty request, whatever its state.
_PROBE_METHOD = {
    "profile_store": "GetArtist",
    "similarity": "FindSimilarArtists",
    "analytics": "GetArtistHistory",
    "cache_gateway": "GetStyleProfile",
}


@dataclass(frozen=True)
class Driver:
    """Real RPCs that must move a domain series; it runs once none of its RPCs is pending."""

    service: str
    series: str
    rpcs: tuple[str, ...]
    drive: Callable[[Stack], object]

    @property
    def pending(self) -> list[str]:
        return [rpc for rpc in self.rpcs if rpc in PENDING_RPCS]


def _save_profile(stack: Stack) -> str:
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    with stack.channel("profile_store") as channel:
        store_grpc.ProfileStoreServiceStub(channel).SaveStyleProfile(
            store_pb.SaveStyleProfileRequest(profile=profile(name)), timeout=10
        )
    return name


def _record_generation(stack: Stack) -> None:
    with stack.channel("analytics") as channel:
        analytics_grpc.AnalyticsServiceStub(channel).RecordGeneration(
            analytics_pb.RecordGenerationRequest(
                provider_used="template",
                generation_time_ms=12,
                tokens_used=0,
                cost_usd=0.0,
                user_params=analytics_pb.UserParams(
                    bars=4, tempo=100, time_signature="4/4", variations=1
                ),
            ),
            timeout=10,
        )


def _search(stack: Stack) -> None:
    with stack.channel("similarity") as channel:
        similarity_grpc.SimilarityServiceStub(channel).SearchByEmbedding(
            similarity_pb.SearchByEmbeddingRequest(embedding=unit_vector(3), limit=5), timeout=10
        )


def _read_through_gateway(stack: Stack) -> None:
    name = _save_profile(stack)
    with stack.channel("cache_gateway") as channel:
        stub = gateway_grpc.CacheGatewayServiceStub(channel)
        for _ in range(2):  # a miss, then a hit
            stub.GetStyleProfile(gateway_pb.GetStyleProfileRequest(artist_name=name), timeout=10)


def _missing_artist(stack: Stack) -> None:
    with stack.channel("profile_store") as channel, pytest.raises(grpc.RpcError):
        store_grpc.ProfileStoreServiceStub(channel).GetArtist(
            store_pb.GetArtistRequest(name=f"{PREFIX}nobody"), timeout=10
        )


_S = "stylebase.profile_store.v1.ProfileStoreService/"
DRIVERS = [
    Driver(
        "profile_store", "db_style_profile_saves_total", (_S + "SaveStyleProfile",), _save_profile
    ),
    Driver(
        "profile_store", "db_query_duration_seconds_count", (_S + "GetArtist",), _missing_artist
    ),
    Driver(
        "analytics",
        "db_generation_history_saves_total",
        ("stylebase.analytics.v1.AnalyticsService/RecordGeneration",),
        _record_generation,
    ),
    Driver(
        "similarity",
        "db_similarity_searches_total",
        ("stylebase.similarity.v1.SimilarityService/SearchByEmbedding",),
        _search,
    ),
    Driver(
        "cache_gateway",
        "cache_tier_requests_total",
        (_S + "SaveStyleProfile", "stylebase.cache_gateway.v1.CacheGatewayService/GetStyleProfile"),
        _read_through_gateway,
    ),
]


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: f"{d.service}-{d.series}")
def test_domain_series_move_after_real_rpcs(stack: Stack, driver: Driver) -> None:
    if driver.pending:
        pytest.skip(f"{', '.join(driver.pending)} still pending")
    before = total(parse(stack.scrape(driver.service)), driver.series)
    driver.drive(stack)
    after = total(parse(stack.scrape(driver.service)), driver.series)
    assert after > before


def test_recall_canary_publishes_its_gauge(stack: Stack) -> None:
    def published() -> bool:
        return total(parse(stack.scrape("similarity")), "similarity_index_recall", k="10") > 0

    _wait_for(published, "a recall@10 sample")


# ---------------------------------------------------------------- traces across processes


def _by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["span_id"]: span for span in spans}


def _ancestors(span: dict[str, Any], index: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    chain = []
    while span.get("parent_span_id") in index:
        span = index[span["parent_span_id"]]
        chain.append(span)
    return chain


async def test_trace_context_crosses_into_a_service_process_and_reaches_sql(stack: Stack) -> None:
    """The caller's span (this process) is the parent of the service's SERVER span (another
    process), and the service's SQL spans are children of that SERVER span."""
    provider = TracerProvider()
    with provider.get_tracer("tests").start_as_current_span("caller") as caller:
        async with service_channel(stack.processes["similarity"].target) as channel:
            await similarity_grpc.SimilarityServiceStub(channel).SearchByEmbedding(
                similarity_pb.SearchByEmbeddingRequest(embedding=unit_vector(5), limit=3),
                timeout=10,
            )
    trace_id = format_trace_id(caller.get_span_context().trace_id)
    caller_id = format_span_id(caller.get_span_context().span_id)

    def server_span_and_sql() -> bool:
        mine = [s for s in stack.spans() if s["trace_id"] == trace_id]
        return any(s["kind"] == "SERVER" for s in mine) and any(
            s["attributes"].get("db.system") for s in mine
        )

    _wait_for(server_span_and_sql, "the similarity spans of this trace")
    spans = [s for s in stack.spans() if s["trace_id"] == trace_id]
    server = next(s for s in spans if s["kind"] == "SERVER")
    assert server["service"] == "similarity"
    assert server["name"] == "stylebase.similarity.v1.SimilarityService/SearchByEmbedding"
    assert server["parent_span_id"] == caller_id
    index = _by_id(spans)
    sql = [s for s in spans if s["attributes"].get("db.system") == "postgresql"]
    assert sql and all(server in _ancestors(s, index) for s in sql)
    assert any(s["attributes"]["db.sql.table"] == "style_profiles" for s in sql)


def _chain_test_pending(*rpcs: str) -> None:
    pending = [rpc for rpc in rpcs if rpc in PENDING_RPCS]
    if pending:
        pytest.skip(f"{', '.join(pending)} still pending")


def test_gateway_miss_is_one_trace_from_gateway_through_store_to_sql(stack: Stack) -> None:
    gateway_get = "stylebase.cache_gateway.v1.CacheGatewayService/GetStyleProfile"
    store_get = _S + "GetStyleProfile"
    _chain_test_pending(_S + "SaveStyleProfile", gateway_get, store_get)
    name = _save_profile(stack)
    with stack.channel("cache_gateway") as channel:
        reply = gateway_grpc.CacheGatewayServiceStub(channel).GetStyleProfile(
            gateway_pb.GetStyleProfileRequest(artist_name=name), timeout=10
        )
    assert reply.served_from == gateway_pb.SERVED_FROM_STORE

    def found() -> dict[str, Any] | None:
        spans = stack.spans()
        index = _by_id(spans)
        for span in spans:
            if span["service"] != "profile_store" or span["attributes"].get("db.system") is None:
                continue
            chain = _ancestors(span, index)
            names = [(s["service"], s["kind"], s["name"]) for s in chain]
            if names[-3:] == [
                ("profile_store", "SERVER", store_get),
                ("cache_gateway", "CLIENT", store_get),
                ("cache_gateway", "SERVER", gateway_get),
            ]:
                return span
        return None

    _wait_for(lambda: found() is not None, "a SQL span under gateway → store")
    sql = found()
    assert sql is not None
    root = _ancestors(sql, _by_id(stack.spans()))[-1]
    assert root["parent_span_id"] is None and sql["trace_id"] == root["trace_id"]


# ---------------------------------------------------------------- in-process: codes, SQL, logs


_PROBE_SERVICE = "stylebase.tests.v1.ProbeService"


def _probe_definition() -> ServiceDefinition:
    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    async def invalid(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise InvalidArgument("artist_name", "must not be empty")

    async def unimplemented(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise NotImplementedError

    handler = grpc.method_handlers_generic_handler(
        _PROBE_SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(fn)
            for name, fn in (("Ok", ok), ("Invalid", invalid), ("Unimplemented", unimplemented))
        },
    )
    return ServiceDefinition(
        name="probe",
        full_names=[_PROBE_SERVICE],
        register=lambda server: server.add_generic_rpc_handlers((handler,)),
    )


def _handled(method: str, code: str) -> float:
    labels = {"grpc_service": _PROBE_SERVICE, "grpc_method": method, "grpc_code": code}
    return registry(GRPC_SERVER).get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_server_series_count_each_status_code_the_client_saw() -> None:
    running = await start_server("127.0.0.1:0", _probe_definition())
    expected = {("Ok", "OK"): 2, ("Invalid", "INVALID_ARGUMENT"): 1}
    expected[("Unimplemented", "UNIMPLEMENTED")] = 3
    before = {key: _handled(*key) for key in expected}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for (method, code), count in expected.items():
                call = channel.unary_unary(f"/{_PROBE_SERVICE}/{method}", None, None)
                for _ in range(count):
                    if code == "OK":
                        await call(b"x", timeout=5)
                        continue
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await call(b"x", timeout=5)
                    assert failed.value.code().name == code
            health = health_pb2_grpc.HealthStub(channel)
            live = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS))
            assert live.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await stop_server(running, 0)
    for key, count in expected.items():
        assert _handled(*key) - before[key] == count, key


@pytest.mark.parametrize(
    ("statement", "labels"),
    [
        ("SELECT a.name FROM artists a JOIN style_profiles p ON true", ("select", "artists")),
        ('INSERT INTO "generation_history" (id) VALUES ($1)', ("insert", "generation_history")),
        ("UPDATE style_profiles SET version = 2", ("update", "style_profiles")),
        ("SELECT 1", ("select", "none")),
        ("SELECT * FROM pg_stat_activity", ("select", "other")),
        ("VACUUM artists", ("other", "none")),
    ],
)
def test_statement_labels_stay_within_known_verbs_and_tables(
    statement: str, labels: tuple[str, str]
) -> None:
    assert classify_statement(statement) == labels


def _sample(name: str, **labels: str) -> float:
    return registry(DATABASE).get_sample_value(name, labels) or 0.0


async def test_statements_are_timed_and_failures_counted_by_driver_error(db: Database) -> None:
    timed = {"operation": "select", "table": "research_sources", "origin": "request"}
    failed = {"operation": "select", "error_type": "UndefinedTableError", "origin": "request"}
    count_before = _sample("db_query_duration_seconds_count", **timed)
    errors_before = _sample("db_query_errors_total", **failed)
    async with db.transaction() as session:
        await session.execute(text("SELECT count(*) FROM research_sources"))
    with pytest.raises(Exception, match="no_such_table"):
        async with db.transaction() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
    assert _sample("db_query_duration_seconds_count", **timed) == count_before + 1
    assert _sample("db_query_errors_total", **failed) == errors_before + 1


@pytest.fixture
async def slow_db(database_url: str) -> AsyncIterator[Database]:
    settings = ServiceSettings(
        POSTGRES_DATABASE_URL=database_url, db_pool_size=1, db_slow_query_ms=100
    )
    database = Database.connect(settings, application_name="slow-tests")
    yield database
    await database.dispose()


async def test_slow_query_is_logged_with_its_plan_and_the_transaction_goes_on(
    slow_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.db.engine")
    async with slow_db.transaction() as session:
        await session.execute(text("SELECT 1"))
        await session.execute(
            text("SELECT pg_sleep(0.15), (SELECT count(*) FROM artists WHERE name = :n)"),
            {"n": "x"},
        )
        after = await session.execute(text("SELECT 2"))
        assert after.scalar_one() == 2
    slow = [r for r in caplog.records if r.getMessage().startswith("slow query")]
    assert len(slow) == 1, [r.getMessage() for r in caplog.records]
    record = slow[0]
    assert "pg_sleep" in record.statement  # type: ignore[attr-defined]
    assert " on artists" in record.plan  # type: ignore[attr-defined]
    assert record.duration_ms >= 100  # type: ignore[attr-defined]


async def test_pool_gauges_follow_connections_checked_out(slow_db: Database) -> None:
    await slow_db.ping()  # opens the pool's one connection
    idle = _sample("db_pool_idle_connections")
    active = _sample("db_pool_active_connections")
    async with slow_db.transaction() as session:
        await session.execute(text("SELECT 1"))
        assert _sample("db_pool_active_connections") == active + 1
        assert _sample("db_pool_idle_connections") == idle - 1
        assert slow_db.pool_status()["checked_out"] == 1
    assert _sample("db_pool_active_connections") == active


async def test_admin_rpc_sees_a_connection_checked_out(slow_db: Database) -> None:
    running = await start_server("127.0.0.1:0", _probe_definition())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = admin_grpc.AdminServiceStub(channel)
            async with slow_db.transaction() as session:
                await session.execute(text("SELECT 1"))
                reply = await stub.GetPoolStats(admin_pb.GetPoolStatsRequest(), timeout=5)
                held = next(p for p in reply.pools if p.name == "slow-tests")
            reply = await stub.GetPoolStats(admin_pb.GetPoolStatsRequest(), timeout=5)
            returned = next(p for p in reply.pools if p.name == "slow-tests")
    finally:
        await stop_server(running, 0)
    assert (held.size, held.checked_out, held.idle) == (1, 1, 0)
    assert (returned.checked_out, returned.idle) == (0, 1)


def test_json_log_lines_carry_request_and_trace_ids() -> None:
    provider = TracerProvider()
    record = logging.LogRecord(
        "stylebase.test", logging.INFO, __file__, 1, "saved %s", ("x",), None
    )
    token = request_id_var.set("req-123")
    try:
        with provider.get_tracer("tests").start_as_current_span("rpc") as span:
            line = json.loads(JsonFormatter("profile_store").format(record))
    finally:
        request_id_var.reset(token)
    context = span.get_span_context()
    assert line["msg"] == "saved x" and line["service"] == "profile_store"
    assert line["request_id"] == "req-123"
    assert line["trace_id"] == format_trace_id(context.trace_id)
    assert line["span_id"] == format_span_id(context.span_id)
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.parametrize(
    ("environment", "error"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unknown exporter 'jaeger'"),
        ({"OTEL_TRACES_EXPORTER": "file"}, "needs STYLEBASE_TRACES_FILE"),
        ({"SIMILARITY_METRICS_PORT": "70000"}, "similarity_metrics_port"),
    ],
)
def test_observability_settings_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], error: str
) -> None:
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=error):
        ObservabilitySettings()


def test_no_exporter_by_default_and_console_and_otlp_when_set() -> None:
    """In a child process, since a process installs its tracer provider once."""
    script = (
        "from shared.settings import ObservabilitySettings\n"
        "from shared.telemetry import configure_tracing, tracer\n"
        "assert configure_tracing('probe', ObservabilitySettings()) is None\n"
        "provider = configure_tracing('probe', ObservabilitySettings(\n"
        "    otel_traces_exporter='console,otlp',\n"
        f"    otel_exporter_otlp_endpoint='http://127.0.0.1:{free_port()}'))\n"
        "with tracer.start_as_current_span('hello-console'):\n"
        "    pass\n"
        "provider.shutdown()\n"
    )
    environment = {**os.environ, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    environment.pop("OTEL_TRACES_EXPORTER", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["name"] == "hello-console"
    assert printed["resource"]["attributes"]["service.name"] == "probe"
