"""Prometheus series of the services (names from the specification), grouped by what they measure.

Each group is a collector holding the series one kind of work updates. A service serves the
groups it has from its own registry (ServiceDefinition.metrics; the server builder adds the
gRPC server group and the process group), so a gateway without a database exports no pool
gauges and a store exports no cache series. The series themselves are process-wide objects,
updated where the work happens; a group that no registry serves is simply never scraped.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# A counter's _created series doubles every counter in the exposition and no rule reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
M = TypeVar("M", Counter, Gauge, Histogram)


class SeriesGroup(Collector):
    """Series that one kind of work updates, exported together or not at all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._series: list[Collector] = []

    def add(self, series: M) -> M:
        self._series.append(series)
        return series

    def collect(self) -> Iterable[Metric]:
        for series in self._series:
            yield from series.collect()

    def describe(self) -> Iterable[Metric]:
        for series in self._series:
            yield from series.describe()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"SeriesGroup({self.name!r})"


class _Always(SeriesGroup):
    """The client library's own process, platform and GC collectors (process_*, python_*)."""

    def collect(self) -> Iterator[Metric]:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            yield from collector.collect()

    def describe(self) -> Iterable[Metric]:
        return ()


def registry(*groups: SeriesGroup) -> CollectorRegistry:
    """A registry serving exactly these groups (each once)."""
    served = CollectorRegistry(auto_describe=True)
    for group in dict.fromkeys(groups):
        served.register(group)
    return served


def _counter(group: SeriesGroup, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    return group.add(Counter(name, doc, list(labels), registry=None))


def _gauge(group: SeriesGroup, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return group.add(Gauge(name, doc, list(labels), registry=None))


def _histogram(group: SeriesGroup, name: str, doc: str, labels: Iterable[str]) -> Histogram:
    return group.add(Histogram(name, doc, list(labels), registry=None, buckets=_BUCKETS))


PROCESS = _Always("process")

# -- every service with a PostgreSQL pool: statements (shared.db.observe) and the pools
DATABASE = SeriesGroup("database")
DB_QUERY_DURATION = _histogram(
    DATABASE,
    "db_query_duration_seconds",
    "Duration of database operations; origin says whether an RPC or a background loop ran it",
    ["operation", "table", "origin"],
)
DB_QUERY_ERRORS = _counter(
    DATABASE,
    "db_query_errors",
    "Failed database operations",
    ["operation", "error_type", "origin"],
)
DB_SLOW_QUERIES = _counter(
    DATABASE,
    "db_slow_queries",
    "Statements over DB_SLOW_QUERY_MS, logged with their plan",
    ["operation"],
)
DB_POOL_ACTIVE = _gauge(DATABASE, "db_pool_active_connections", "Connections checked out")
DB_POOL_IDLE = _gauge(DATABASE, "db_pool_idle_connections", "Idle connections in the pool")
DB_POOL_SIZE = _gauge(DATABASE, "db_pool_size", "Configured size of the process's pools")
DB_POOL_OVERFLOW = _gauge(
    DATABASE, "db_pool_overflow_connections", "Connections open above the pool size"
)

# -- services whose writes carry request ids (shared.db.idempotency)
REQUEST_LOG = SeriesGroup("request_log")
REQUEST_LOG_REPLAYS = _counter(
    REQUEST_LOG,
    "request_log_replays",
    "Writes answered from the request log instead of written",
    ["rpc"],
)

# -- profile_store
STORE = SeriesGroup("store")
STYLE_PROFILE_SAVES = _counter(STORE, "db_style_profile_saves", "Style profiles saved")
OUTBOX_PENDING = _gauge(
    STORE,
    "profile_invalidation_outbox_pending",
    "Invalidations in the outbox not yet confirmed by Redis (read by the relay each round)",
)

# -- similarity
SIMILARITY = SeriesGroup("similarity")
SIMILARITY_SEARCHES = _counter(
    SIMILARITY, "db_similarity_searches", "Similarity searches served", ["kind"]
)
SIMILARITY_RECALL = _gauge(
    SIMILARITY, "similarity_index_recall", "Recall@k of the vector index (canary)", ["k"]
)

# -- analytics
ANALYTICS = SeriesGroup("analytics")
GENERATION_HISTORY_SAVES = _counter(
    ANALYTICS, "db_generation_history_saves", "Generations recorded"
)

# -- cache_gateway
CACHE = SeriesGroup("cache")
CACHE_HIT_RATE = _gauge(CACHE, "db_cache_hit_rate", "Cache hit rate over both tiers since start")
CACHE_REQUESTS = _counter(
    CACHE, "cache_tier_requests", "Cache lookups by tier and result", ["tier", "result"]
)
CACHE_ERRORS = _counter(CACHE, "db_cache_errors", "Cache errors by kind", ["error_type"])
# Its own group: only a gateway with REDIS_URL has a Redis link to report.
REDIS_LINK = SeriesGroup("redis_link")
CACHE_REDIS_CONNECTED = _gauge(
    REDIS_LINK,
    "cache_redis_connected",
    "1 while the gateway's Redis link is up (coherent mode), 0 while degraded",
)

# -- every gRPC service (the server builder's telemetry interceptor)
GRPC_SERVER = SeriesGroup("grpc_server")
GRPC_SERVER_HANDLED = _counter(
    GRPC_SERVER,
    "grpc_server_handled",
    "RPCs completed on the server, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_HANDLING = _histogram(
    GRPC_SERVER,
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to sending its status",
    ["grpc_service", "grpc_method"],
)

# Label values the code can produce, each child made at import so that rate() and absent()
# see a 0 before the first event.
CACHE_TIERS = (
    ("in_process", "hit"),
    ("in_process", "miss"),
    ("in_process", "negative_hit"),
    ("redis", "hit"),
    ("redis", "miss"),
    ("store", "fetch"),
)
# The kinds the gateway counts: shared.cache.client.error_kind, its own decode and reconnect
# failures, and the store client's (services/cache_gateway/store_client.py).
CACHE_ERROR_TYPES = (
    "redis_timeout",
    "redis_connection",
    "redis_error",
    "redis_decode",
    "redis_reconnect",
    "store_timeout",
    "store_unavailable",
    "store_error",
)
for _tier, _result in CACHE_TIERS:
    CACHE_REQUESTS.labels(tier=_tier, result=_result)
for _kind in CACHE_ERROR_TYPES:
    CACHE_ERRORS.labels(error_type=_kind)


def count_every_code(service: str, method: str) -> dict[grpc.StatusCode, Any]:
    """The handled counter's children for one method, one per status code, all at 0."""
    return {
        code: GRPC_SERVER_HANDLED.labels(service, method, code.name) for code in grpc.StatusCode
    }


class _Pool(Protocol):
    def pool_status(self) -> dict[str, Any]: ...


# The process's database pools; the pool gauges add them up when scraped.
_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def track_pool(pool: _Pool) -> None:
    """Count this pool in the pool gauges (and the admin RPC) for as long as it lives."""
    _POOLS.add(pool)


def tracked_pools() -> list[Any]:
    return list(_POOLS)


def _pool_total(key: str) -> Callable[[], float]:
    def total() -> float:
        return float(sum(pool.pool_status()[key] for pool in list(_POOLS)))

    return total


DB_POOL_ACTIVE.set_function(_pool_total("checked_out"))
DB_POOL_IDLE.set_function(_pool_total("idle"))
DB_POOL_SIZE.set_function(_pool_total("size"))
DB_POOL_OVERFLOW.set_function(_pool_total("overflow"))


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes; every path answers with the registry's exposition."""

    def __init__(self, host: str, port: int, served: CollectorRegistry) -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=served)
        self.port: int = self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
