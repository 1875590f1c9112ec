"""The four services as processes with metrics ports and span files; reading what they export."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import SERVICES
from stylebase.common.v1 import common_pb2
from tests.harness import ServiceProcess, service_env
from tests.otlp_spans import read_spans

FULL_NAMES = {
    "profile_store": "stylebase.profile_store.v1.ProfileStoreService",
    "similarity": "stylebase.similarity.v1.SimilarityService",
    "analytics": "stylebase.analytics.v1.AnalyticsService",
    "cache_gateway": "stylebase.cache_gateway.v1.CacheGatewayService",
}
POOL_SIZE = 3
PREFIX = f"obs-{uuid.uuid4().hex[:8]}-"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def families(exposition: str) -> set[str]:
    """The series names an exposition declares (its # TYPE lines)."""
    return set(re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE))


def unit_vector(seed: int) -> list[float]:
    return [1.0 if i == seed % 384 else 0.01 for i in range(384)]


def profile(name: str) -> common_pb2.StyleProfile:
    return common_pb2.StyleProfile(
        artist_name=name,
        text_description="tight pocket, ghost notes on the snare",
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=90,
            tempo_max=110,
            tempo_avg=100,
            swing_percent=12,
            ghost_note_prob=0.3,
            syncopation_level=0.4,
            velocity_mean=90,
            velocity_std=12,
        ),
        embedding=unit_vector(len(name)),
        confidence_score=0.8,
    )


@dataclass
class Stack:
    processes: dict[str, ServiceProcess]
    metrics_ports: dict[str, int]
    traces: dict[str, Path]

    def channel(self, service: str) -> grpc.Channel:
        return grpc.insecure_channel(self.processes[service].target)

    def scrape(self, service: str) -> str:
        url = f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body: bytes = reply.read()
        return body.decode()

    def spans(self) -> list[dict[str, Any]]:
        return [span for path in self.traces.values() for span in read_spans(path)]


@contextmanager
def running_stack(
    database_url: str, postgres: EmbeddedPostgres, redis_server: RedisServer, tmp: Path
) -> Iterator[Stack]:
    """The four services as separate processes, each with its metrics port and span file."""
    processes: dict[str, ServiceProcess] = {
        s: ServiceProcess(s, {}, log_path=tmp / f"{s}.log") for s in SERVICES
    }
    metrics_ports: dict[str, int] = {s: free_port() for s in SERVICES}
    traces: dict[str, Path] = {s: tmp / f"{s}.spans.jsonl" for s in SERVICES}
    for service, process in processes.items():
        process.env = service_env(
            database_url,
            {
                f"{service.upper()}_METRICS_PORT": str(metrics_ports[service]),
                "OTEL_TRACES_EXPORTER": "file",
                "STYLEBASE_TRACES_FILE": str(traces[service]),
                "DB_POOL_SIZE": str(POOL_SIZE),
                "REDIS_URL": redis_server.url,
                "PROFILE_STORE_TARGET": processes["profile_store"].target,
                "CACHE_GATEWAY_TARGET": processes["cache_gateway"].target,
                "SIMILARITY_RECALL_CANARY_INTERVAL_SECONDS": "1",
                # Keys of its own: a warm-up from the read counts earlier tests left in the
                # session's Redis would touch the counters before the tests' own RPCs.
                "REDIS_KEY_PREFIX": f"stylebase:scope-{uuid.uuid4().hex[:8]}",
                # The save's own invalidation call must not time out on a busy machine: a
                # relay retry would start a trace of its own.
                "CACHE_INVALIDATION_TIMEOUT_MS": "10000",
                "LOG_LEVEL": "INFO",
            },
        )
    _seed_embeddings(postgres, database_url)
    try:
        for process in processes.values():
            process.start(timeout=60)
        yield Stack(processes, metrics_ports, traces)
    finally:
        for process in processes.values():
            process.stop()
        postgres.psql(
            f"DELETE FROM artists WHERE name LIKE '{PREFIX}%'", database=database_name(database_url)
        )


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1].split("?")[0]


def _seed_embeddings(postgres: EmbeddedPostgres, database_url: str) -> None:
    """Artists with embeddings, so the recall canary has something to measure."""
    postgres.psql(
        "INSERT INTO artists (id, name, research_status) SELECT gen_random_uuid(), "
        f"'{PREFIX}' || g, 'cached' FROM generate_series(1, 30) g "
        "ON CONFLICT (name) DO NOTHING;"
        "INSERT INTO style_profiles (id, artist_id, text_description, quantitative_params,"
        " embedding, confidence_score) SELECT gen_random_uuid(), a.id, 'seeded', '{}'::jsonb,"
        " (SELECT array_agg(random()) FROM generate_series(1, 384) WHERE a.id IS NOT NULL)"
        f"::vector, 0.5 FROM artists a WHERE a.name LIKE '{PREFIX}%'"
        " AND NOT EXISTS (SELECT 1 FROM style_profiles p WHERE p.artist_id = a.id)",
        database=database_name(database_url),
    )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout} s")
