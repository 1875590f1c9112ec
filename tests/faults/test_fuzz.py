"""Hostile requests to every RPC of every service, over real gRPC to the four real processes.

Requests are generated from the request messages' descriptors (tests/faults/fuzz_strategies.py),
so an RPC or field added later is fuzzed without a change here. Whatever a client sends, the
answer is never INTERNAL or UNKNOWN (a bug on our side) nor UNAVAILABLE (every dependency is
up), and every service still reports SERVING afterwards. Garbage bytes that are not a request
message at all are INVALID_ARGUMENT too (grpcio alone would answer UNKNOWN), without a traceback
in the log per request.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings

from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from stylebase.admin.v1 import admin_service_pb2
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb
from tests.faults.fuzz_strategies import Strategies
from tests.harness import ServiceProcess, service_env

# Process name → the generated module of the API it serves; each also serves AdminService.
SERVICES: dict[str, ModuleType] = {
    "profile_store": store_pb,
    "similarity": similarity_pb,
    "analytics": analytics_pb,
    "cache_gateway": cache_gateway_service_pb2,
}
# Full method path → why it is not fuzzed. Empty: every RPC is.
SKIPPED: dict[str, str] = {}
NEVER = ("INTERNAL", "UNKNOWN", "UNAVAILABLE")
CALL_TIMEOUT = 20.0
DATABASE = "stylebase_fuzz"
KNOWN = [f"Fuzz Seed {i:02d}" for i in range(12)]
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Rpc:
    process: str
    path: str
    method: MethodDescriptor


def every_rpc() -> list[Rpc]:
    found: list[Rpc] = []
    admin = admin_service_pb2.DESCRIPTOR.services_by_name.values()
    for process, module in SERVICES.items():
        for service in [*module.DESCRIPTOR.services_by_name.values(), *admin]:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if path not in SKIPPED:
                    found.append(Rpc(process, path, method))
    return found


def _vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def _profile(name: str, seed: int) -> common_pb2.StyleProfile:
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description=f"{name} plays behind the beat.\n\tTake {seed}.",
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=85 + seed,
            tempo_max=98 + seed,
            tempo_avg=92 + seed,
            swing_percent=58.5,
            ghost_note_prob=0.35,
            syncopation_level=0.6,
            velocity_mean=88,
            velocity_std=14,
        ),
        midi_templates=[f"templates/{seed}/groove.mid"],
        embedding=_vector(seed),
        confidence_score=0.8,
        sources_count=common_pb2.SourceCounts(papers=1, articles=2, audio=3, midi=4),
    )


def _templates() -> dict[str, list[Message]]:
    """Valid messages the strategies start from and then spoil a field or two of."""
    params = analytics_pb.UserParams(bars=4, tempo=120, time_signature="4/4", variations=2)
    record = analytics_pb.RecordGenerationRequest(
        artist_name=KNOWN[0],
        provider_used="template",
        generation_time_ms=1200,
        tokens_used=300,
        cost_usd=0.01,
        user_params=params,
        output_files=["out/groove.mid"],
    )
    source = common_pb2.ResearchSource(
        source_type=common_pb2.SOURCE_TYPE_PAPER,
        url="https://example.org/paper",
        raw_content="notes",
        confidence=0.7,
    )
    source.extracted_data.update({"bpm": 92, "feel": "laid back"})
    return {
        "stylebase.common.v1.StyleProfile": [_profile(n, i) for i, n in enumerate(KNOWN[:3])],
        "stylebase.common.v1.ResearchSource": [source],
        "stylebase.analytics.v1.UserParams": [params],
        "stylebase.analytics.v1.RecordGenerationRequest": [record],
        "stylebase.analytics.v1.GetStatsRequest": [
            analytics_pb.GetStatsRequest(
                since=Timestamp(seconds=1_700_000_000), until=Timestamp(seconds=1_800_000_000)
            )
        ],
        "stylebase.similarity.v1.SearchByEmbeddingRequest": [
            similarity_pb.SearchByEmbeddingRequest(embedding=_vector(99), limit=5)
        ],
        "stylebase.similarity.v1.MeasureRecallRequest": [
            similarity_pb.MeasureRecallRequest(sample_size=5, k=3)
        ],
        "stylebase.cache_gateway.v1.WarmCacheRequest": [
            cache_gateway_service_pb2.WarmCacheRequest(artist_names=KNOWN[:2])
        ],
    }


@dataclass
class Stack:
    processes: dict[str, ServiceProcess]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, process: str) -> grpc.Channel:
        if process not in self.channels:
            self.channels[process] = grpc.insecure_channel(self.processes[process].target)
        return self.channels[process]

    def seed(self) -> None:
        """Upsert the known artists (a fuzzed DeleteArtist may have removed some)."""
        save = self.channel("profile_store").unary_unary(
            "/stylebase.profile_store.v1.ProfileStoreService/BatchSaveStyleProfiles",
            request_serializer=store_pb.BatchSaveStyleProfilesRequest.SerializeToString,
            response_deserializer=store_pb.BatchSaveStyleProfilesResponse.FromString,
        )
        profiles = [_profile(name, i) for i, name in enumerate(KNOWN)]
        save(store_pb.BatchSaveStyleProfilesRequest(profiles=profiles), timeout=CALL_TIMEOUT)

    def health(self) -> dict[str, int]:
        out = {}
        for process in self.processes:
            stub = health_pb2_grpc.HealthStub(self.channel(process))
            out[process] = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        return out

    def log(self, process: str) -> str:
        path = self.processes[process].log_path
        return path.read_text(errors="replace") if path and path.exists() else ""


@pytest.fixture(scope="module")
def stack(
    postgres: EmbeddedPostgres,
    database_url: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The four services on a database of their own, so the junk they write stays there."""
    postgres.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    postgres.psql(f"CREATE DATABASE {DATABASE}")
    url = database_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    migrate.upgrade(url)
    logs = tmp_path_factory.mktemp("fuzz")
    processes = {s: ServiceProcess(s, {}, log_path=logs / f"{s}.log") for s in SERVICES}
    for process in processes.values():
        process.env = service_env(
            url,
            {
                "REDIS_URL": redis_server.url,
                "PROFILE_STORE_TARGET": processes["profile_store"].target,
                "CACHE_GATEWAY_TARGET": processes["cache_gateway"].target,
                "DB_POOL_SIZE": "4",
            },
        )
    try:
        for process in processes.values():
            process.start(timeout=60)
        running = Stack(processes)
        running.seed()
        yield running
    finally:
        for process in processes.values():
            process.stop()
        postgres.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    # code → (the smallest request that got it, the status details)
    worst: dict[str, tuple[Message, str]] = field(default_factory=dict)


def _fuzz(stack: Stack, rpc: Rpc, strategies: Strategies, examples: int) -> Outcome:
    outcome = Outcome()
    call = stack.channel(rpc.process).unary_unary(
        rpc.path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategies.message(rpc.method.input_type))
    def run(request: Message) -> None:
        try:
            call(request, timeout=CALL_TIMEOUT)
            code, details = "OK", ""
        except grpc.RpcError as error:
            code, details = error.code().name, str(error.details())
        outcome.counts[code] += 1
        if code in NEVER:
            seen = outcome.worst.get(code)
            if seen is None or request.ByteSize() < seen[0].ByteSize():
                outcome.worst[code] = (request, details)

    run()
    return outcome


def _table(outcomes: dict[str, Outcome]) -> str:
    codes = sorted({c for o in outcomes.values() for c in o.counts})
    width = max(len(p) for p in outcomes)
    lines = [f"{'rpc':<{width}} " + " ".join(f"{c[:12]:>12}" for c in codes)]
    for path, o in outcomes.items():
        lines.append(f"{path:<{width}} " + " ".join(f"{o.counts[c]:>12}" for c in codes))
    return "\n".join(lines)


def _short(request: Message) -> str:
    shown = text_format.MessageToString(request, as_one_line=True)
    return shown if len(shown) <= 400 else shown[:400] + f"... ({request.ByteSize()} bytes)"


def _check_every_rpc(stack: Stack, examples: int, *, long_strings: bool) -> None:
    strategies = Strategies(KNOWN, _templates(), long_strings=long_strings)
    outcomes: dict[str, Outcome] = {}
    for rpc in every_rpc():
        stack.seed()
        label = rpc.path if rpc.process in rpc.path else f"{rpc.process}:{rpc.path}"
        outcomes[label] = _fuzz(stack, rpc, strategies, examples)
    print(f"\nfuzzed requests per RPC: {examples}\n{_table(outcomes)}")
    bugs = [
        f"{path}: {code} for {_short(request)}: {details}"
        for path, o in outcomes.items()
        for code, (request, details) in o.worst.items()
    ]
    for line in bugs:
        print(line)
    assert not bugs, f"{len(bugs)} RPC/code pairs that must never happen:\n" + "\n".join(bugs)
    assert stack.health() == dict.fromkeys(SERVICES, SERVING)


def test_hostile_requests_never_give_internal_or_unknown(stack: Stack) -> None:
    _check_every_rpc(stack, 25, long_strings=True)


@pytest.mark.faults
def test_hostile_requests_never_give_internal_or_unknown_long_run(stack: Stack) -> None:
    _check_every_rpc(stack, 500, long_strings=True)


GARBAGE = (
    b"\xff" * 32,
    b"\x0a\xff\xff\xff\xff\x0f",  # a length-delimited field claiming 4 GB
    b"\x08",  # a varint tag with no value
    bytes(random.Random(7).getrandbits(8) for _ in range(512)),
)


def test_garbage_request_bytes_log_no_traceback(stack: Stack) -> None:
    """Bytes that are no request message at all fail in the deserializer, before any handler:
    grpcio alone answers UNKNOWN and logs a traceback at ERROR for each."""
    codes: Counter[str] = Counter()
    before = {process: len(stack.log(process)) for process in SERVICES}
    for rpc in every_rpc():
        # No serializers: the payload goes out as it is.
        call = stack.channel(rpc.process).unary_unary(
            rpc.path, request_serializer=None, response_deserializer=None
        )
        for payload in GARBAGE:
            try:
                call(payload, timeout=CALL_TIMEOUT)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
    print(f"\ngarbage requests: {sum(codes.values())}, codes {dict(codes)}")
    assert set(codes) == {"INVALID_ARGUMENT"}
    for process in SERVICES:
        log = stack.log(process)[before[process] :]
        tracebacks = log.count("Traceback")
        warnings = log.count("undecodable request")
        methods = sum(rpc.process == process for rpc in every_rpc())
        print(f"{process}: {tracebacks} tracebacks, {warnings} warnings for {methods} methods")
        assert tracebacks == 0, f"{process} logged a traceback:\n{log[-3000:]}"
        # One line per method at most (a minute apart), not one per request.
        assert warnings <= methods
    assert stack.health() == dict.fromkeys(SERVICES, SERVING)
