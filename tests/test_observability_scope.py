"""What each service exports, scraped and read from real processes: only its own series, every
labelled counter at 0 from the start, background work labelled apart and left untraced."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from shared.db.observe import CONNECT_ERRORS, STATEMENT_ERRORS, VERBS
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.metrics import CACHE_ERROR_TYPES, CACHE_TIERS
from shared.settings import SERVICES
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity_grpc
from tests.harness import ROOT
from tests.observability_support import (
    FULL_NAMES,
    PREFIX,
    Stack,
    database_name,
    families,
    parse,
    profile,
    running_stack,
    total,
    unit_vector,
    wait_for,
)
from tests.otlp_spans import read_spans, requests

GRPC = {"grpc_server_handled_total", "grpc_server_handling_seconds"}
DATABASE = {
    "db_query_duration_seconds",
    "db_query_errors_total",
    "db_slow_queries_total",
    "db_pool_active_connections",
    "db_pool_idle_connections",
    "db_pool_size",
    "db_pool_overflow_connections",
}
REQUEST_LOG = {"request_log_replays_total"}
# Exactly what each service declares, besides the client library's process_* and python_*.
EXPECTED = {
    "profile_store": GRPC
    | DATABASE
    | REQUEST_LOG
    | {"db_style_profile_saves_total", "profile_invalidation_outbox_pending"},
    "similarity": GRPC | DATABASE | {"db_similarity_searches_total", "similarity_index_recall"},
    "analytics": GRPC | DATABASE | REQUEST_LOG | {"db_generation_history_saves_total"},
    "cache_gateway": GRPC
    | {"db_cache_hit_rate", "cache_tier_requests_total", "db_cache_errors_total"}
    | {"cache_redis_connected"},
}
# Spelled out for the reader: what the bug reports were about.
FORBIDDEN = {
    "cache_gateway": DATABASE,
    "profile_store": {"db_cache_hit_rate", "cache_tier_requests_total", "cache_redis_connected"},
    "similarity": {
        "db_cache_hit_rate",
        "cache_tier_requests_total",
        "db_style_profile_saves_total",
    },
    "analytics": {"db_cache_hit_rate", "cache_tier_requests_total", "similarity_index_recall"},
}
SERVICE_DESCRIPTORS: dict[str, ServiceDescriptor] = {
    "profile_store": store_pb.DESCRIPTOR.services_by_name["ProfileStoreService"],
    "similarity": similarity_pb.DESCRIPTOR.services_by_name["SimilarityService"],
    "analytics": analytics_pb.DESCRIPTOR.services_by_name["AnalyticsService"],
    "cache_gateway": gateway_pb.DESCRIPTOR.services_by_name["CacheGatewayService"],
}
DATABASE_SERVICES = ("profile_store", "similarity", "analytics")
_ALWAYS = re.compile(r"^(process|python)_")
# Status codes that are answers about the request, not failures of the server.
CLIENT_CODES = ("NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "FAILED_PRECONDITION")


@pytest.fixture(scope="module")
def stack(
    database_url: str,
    postgres: EmbeddedPostgres,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with running_stack(
        database_url, postgres, redis_server, tmp_path_factory.mktemp("scope")
    ) as running:
        yield running


def _background_polls(stack: Stack, service: str) -> float:
    samples = parse(stack.scrape(service))
    return total(
        samples, "db_query_duration_seconds_count", table="alembic_version", origin="background"
    )


@pytest.fixture(scope="module")
def idled(stack: Stack) -> Stack:
    """The stack after its background loops have each run a few rounds, before any RPC here."""
    for service in DATABASE_SERVICES:
        start = _background_polls(stack, service)

        def polled(service: str = service, start: float = start) -> bool:
            return _background_polls(stack, service) >= start + 3

        wait_for(polled, f"three readiness polls of {service}")
    return stack


# ---------------------------------------------------------------- which series, from the start


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_declares_exactly_its_own_series(idled: Stack, service: str) -> None:
    declared = {name for name in families(idled.scrape(service)) if not _ALWAYS.match(name)}
    assert declared == EXPECTED[service]
    assert not declared & FORBIDDEN[service]


@pytest.mark.parametrize("service", SERVICES)
def test_no_created_series(idled: Stack, service: str) -> None:
    exposition = idled.scrape(service)
    assert "_created" not in exposition


@pytest.mark.parametrize("service", SERVICES)
def test_handled_counter_starts_at_zero_for_every_method_and_code(
    idled: Stack, service: str
) -> None:
    samples = parse(idled.scrape(service))
    for method in SERVICE_DESCRIPTORS[service].methods:
        for code in grpc.StatusCode:
            labels = {"grpc_service": FULL_NAMES[service], "grpc_method": method.name}
            key = (
                "grpc_server_handled_total",
                frozenset({**labels, "grpc_code": code.name}.items()),
            )
            assert key in samples, key
    # No RPC of the service's own has been sent yet.
    assert total(samples, "grpc_server_handled_total", grpc_service=FULL_NAMES[service]) == 0


@pytest.mark.parametrize("service", DATABASE_SERVICES)
def test_query_errors_start_at_zero_for_every_operation_and_error(
    idled: Stack, service: str
) -> None:
    samples = parse(idled.scrape(service))

    def present(operation: str, error: str, origin: str) -> bool:
        labels = {"operation": operation, "error_type": error, "origin": origin}
        return ("db_query_errors_total", frozenset(labels.items())) in samples

    for origin in ("request", "background"):
        assert all(present(v, e, origin) for v in [*VERBS, "other"] for e in STATEMENT_ERRORS)
        assert all(present("connect", e, origin) for e in CONNECT_ERRORS)
    assert total(samples, "db_query_errors_total", error_type="UniqueViolationError") == 0


def test_cache_counters_start_at_zero(idled: Stack) -> None:
    samples = parse(idled.scrape("cache_gateway"))
    for tier, result in CACHE_TIERS:
        labels = frozenset({"tier": tier, "result": result}.items())
        assert samples[("cache_tier_requests_total", labels)] == 0
    for kind in CACHE_ERROR_TYPES:
        assert ("db_cache_errors_total", frozenset({"error_type": kind}.items())) in samples


def test_gateway_reports_its_redis_link(idled: Stack) -> None:
    def connected() -> bool:
        samples = parse(idled.scrape("cache_gateway"))
        return total(samples, "cache_redis_connected") == 1

    wait_for(connected, "cache_redis_connected 1")


def test_store_reports_the_outbox_rows_waiting(idled: Stack, postgres: EmbeddedPostgres) -> None:
    name = f"{PREFIX}outbox-{uuid.uuid4().hex[:6]}"
    dbname = database_name(idled.processes["profile_store"].env["POSTGRES_DATABASE_URL"])
    # Due in an hour: the relay leaves it alone, so the gauge must count it.
    postgres.psql(
        "INSERT INTO profile_invalidation_outbox"
        " (artist_name, version, deleted, created_at, attempts, next_attempt_at)"
        f" VALUES ('{name}', 1, false, now(), 0, now() + interval '1 hour')",
        database=dbname,
    )
    try:

        def counted() -> bool:
            samples = parse(idled.scrape("profile_store"))
            return total(samples, "profile_invalidation_outbox_pending") >= 1

        wait_for(counted, "profile_invalidation_outbox_pending >= 1")
    finally:
        postgres.psql(
            f"DELETE FROM profile_invalidation_outbox WHERE artist_name = '{name}'",
            database=dbname,
        )


# ---------------------------------------------------------------- origin and spans


def test_idle_background_loops_make_no_root_spans(idled: Stack) -> None:
    """Readiness polls, the outbox relay, the canary and the gateway's health checks have run
    (the fixture saw the polls): none of it is a trace."""
    roots = [s for s in idled.spans() if s["parent_span_id"] is None]
    background = [
        (s["service"], s["kind"], s["name"])
        for s in roots
        if s["kind"] != "SERVER" or s["name"].startswith("grpc.health.v1.Health/")
    ]
    assert background == []


def test_readiness_polls_are_background_and_rpcs_are_requests(idled: Stack) -> None:
    before = parse(idled.scrape("profile_store"))
    with idled.channel("profile_store") as channel, pytest.raises(grpc.RpcError):
        store_grpc.ProfileStoreServiceStub(channel).GetArtist(
            store_pb.GetArtistRequest(name=f"{PREFIX}nobody"), timeout=10
        )
    after = parse(idled.scrape("profile_store"))
    count = "db_query_duration_seconds_count"
    assert total(after, count, table="alembic_version", origin="background") > 0
    assert total(after, count, table="alembic_version", origin="request") == 0
    assert total(after, count, table="artists", origin="request") > total(
        before, count, table="artists", origin="request"
    )


def _spans_named(stack: Stack, service: str, name: str) -> list[dict[str, Any]]:
    return [s for s in stack.spans() if s["service"] == service and s["name"] == name]


def test_not_found_is_not_a_span_error_and_sql_spans_name_their_table(idled: Stack) -> None:
    missing = f"{PREFIX}missing-{uuid.uuid4().hex[:6]}"
    with idled.channel("cache_gateway") as channel, pytest.raises(grpc.RpcError) as failed:
        gateway_grpc.CacheGatewayServiceStub(channel).GetStyleProfile(
            gateway_pb.GetStyleProfileRequest(artist_name=missing), timeout=10
        )
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    gateway_get = f"{FULL_NAMES['cache_gateway']}/GetStyleProfile"
    store_get = f"{FULL_NAMES['profile_store']}/GetStyleProfile"

    def spans() -> list[dict[str, Any]]:
        # The gateway's SERVER span, its CLIENT span of the call to the store, the store's.
        return [
            *_spans_named(idled, "cache_gateway", gateway_get),
            *_spans_named(idled, "cache_gateway", store_get),
            *_spans_named(idled, "profile_store", store_get),
        ]

    wait_for(lambda: len(spans()) >= 3, "the gateway's and the store's spans of the miss")
    assert {(s["service"], s["kind"]) for s in spans()} == {
        ("cache_gateway", "SERVER"),
        ("cache_gateway", "CLIENT"),
        ("profile_store", "SERVER"),
    }
    for span in spans():
        assert span["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert span["status"] != "ERROR", span
    trace_ids = {s["trace_id"] for s in spans()}
    sql = [
        s
        for s in idled.spans()
        if s["trace_id"] in trace_ids and s["attributes"].get("db.system") == "postgresql"
    ]
    assert sql and all(not s["name"].endswith(" other") for s in sql), [s["name"] for s in sql]
    assert any(s["name"] == "SELECT artists" for s in sql), [s["name"] for s in sql]


@pytest.mark.parametrize("service", SERVICES)
def test_span_file_is_otlp_json(idled: Stack, service: str) -> None:
    method = SERVICE_DESCRIPTORS[service].methods[0].name
    with idled.channel(service) as channel:
        call = channel.unary_unary(
            f"/{FULL_NAMES[service]}/{method}",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        with contextlib.suppress(grpc.RpcError):  # an empty request may well be refused
            call(b"", timeout=10)
    wait_for(lambda: bool(requests(idled.traces[service])), f"{service} spans written")
    for request in requests(idled.traces[service]):
        assert request.resource_spans, request
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                assert all(len(span.trace_id) == 16 for span in scope_spans.spans)


# ---------------------------------------------------------------- table labels after real work


def _workload(stack: Stack) -> None:
    """One of each kind of work the services do: saves with request ids, reads through the
    gateway, deletes, searches, generations with request ids, stats and history."""
    name = f"{PREFIX}work-{uuid.uuid4().hex[:6]}"
    with stack.channel("profile_store") as channel:
        store = store_grpc.ProfileStoreServiceStub(channel)
        request_id = uuid.uuid4().hex
        for _ in range(2):  # the second is answered from the request log
            store.SaveStyleProfile(
                store_pb.SaveStyleProfileRequest(profile=profile(name), request_id=request_id),
                timeout=10,
            )
        store.ListArtists(store_pb.ListArtistsRequest(), timeout=10)
    with stack.channel("cache_gateway") as channel:
        gateway = gateway_grpc.CacheGatewayServiceStub(channel)
        for _ in range(2):
            gateway.GetStyleProfile(gateway_pb.GetStyleProfileRequest(artist_name=name), timeout=10)
    with stack.channel("similarity") as channel:
        similarity = similarity_grpc.SimilarityServiceStub(channel)
        similarity.SearchByEmbedding(
            similarity_pb.SearchByEmbeddingRequest(embedding=unit_vector(7), limit=5), timeout=10
        )
        similarity.FindSimilarArtists(
            similarity_pb.FindSimilarArtistsRequest(artist_name=name), timeout=10
        )
    with stack.channel("analytics") as channel:
        analytics = analytics_grpc.AnalyticsServiceStub(channel)
        analytics.RecordGeneration(
            analytics_pb.RecordGenerationRequest(
                artist_name=name,
                provider_used="template",
                generation_time_ms=12,
                user_params=analytics_pb.UserParams(
                    bars=4, tempo=100, time_signature="4/4", variations=1
                ),
                request_id=uuid.uuid4().hex,
            ),
            timeout=10,
        )
        analytics.GetStats(analytics_pb.GetStatsRequest(), timeout=10)
        analytics.GetArtistHistory(
            analytics_pb.GetArtistHistoryRequest(artist_name=name), timeout=10
        )
    with stack.channel("profile_store") as channel:
        store_grpc.ProfileStoreServiceStub(channel).DeleteArtist(
            store_pb.DeleteArtistRequest(artist_name=name), timeout=10
        )


def test_every_statement_after_real_work_names_a_real_table(idled: Stack) -> None:
    _workload(idled)
    time.sleep(1.5)  # a relay round and a canary round after the work
    for service in DATABASE_SERVICES:
        samples = parse(idled.scrape(service))
        tables = {
            dict(labels)["table"]
            for name, labels in samples
            if name == "db_query_duration_seconds_count"
        }
        assert "other" not in tables, (service, sorted(tables))
        assert tables - {"none"}, service


# ---------------------------------------------------------------- which codes are span errors

_PROBE_SCRIPT = """
import asyncio, grpc
from shared import errors
from shared.grpc.server import ServiceDefinition, start_server, stop_server
from shared.settings import ObservabilitySettings
from shared.telemetry import configure_tracing

NAME = "stylebase.tests.v1.ProbeService"
RAISES = {
    "NotFound": lambda: errors.NotFound("no such artist"),
    "InvalidArgument": lambda: errors.InvalidArgument("artist_name", "must not be empty"),
    "AlreadyExists": lambda: errors.AlreadyExists("already there"),
    "FailedPrecondition": lambda: errors.FailedPrecondition("not yet"),
    "Unavailable": lambda: errors.Unavailable("away"),
    "DeadlineExceeded": lambda: errors.DeadlineExceeded("too slow"),
    "Internal": lambda: RuntimeError("a bug"),
}

def raising(make):
    async def handler(request, context):
        raise make()
    return handler

handlers = grpc.method_handlers_generic_handler(
    NAME, {n: grpc.unary_unary_rpc_method_handler(raising(m)) for n, m in RAISES.items()}
)

async def main():
    definition = ServiceDefinition(
        name="probe", full_names=[NAME], register=lambda s: s.add_generic_rpc_handlers((handlers,))
    )
    running = await start_server("127.0.0.1:0", definition)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        for name in RAISES:
            try:
                await channel.unary_unary(f"/{NAME}/{name}")(b"", timeout=5)
            except grpc.aio.AioRpcError:
                pass
    await stop_server(running, 0)

provider = configure_tracing("probe", ObservabilitySettings())
asyncio.run(main())
provider.shutdown()
"""


def test_only_server_faults_are_span_errors(tmp_path: Path) -> None:
    spans_file = tmp_path / "probe.spans.jsonl"
    environment = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "file",
        "STYLEBASE_TRACES_FILE": str(spans_file),
    }
    result = subprocess.run(
        [sys.executable, "-c", _PROBE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    status = {
        span["name"].rsplit("/", 1)[1]: span["status"]
        for span in read_spans(spans_file)
        if span["kind"] == "SERVER" and span["name"].startswith("stylebase.tests.v1.")
    }
    assert status == {
        "NotFound": "UNSET",
        "InvalidArgument": "UNSET",
        "AlreadyExists": "UNSET",
        "FailedPrecondition": "UNSET",
        "Unavailable": "ERROR",
        "DeadlineExceeded": "ERROR",
        "Internal": "ERROR",
    }
