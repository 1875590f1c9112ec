"""Prometheus series shared by the services (names from the specification).

Services update the domain series where the work happens. The server builder
records the gRPC series, the engine records every statement's duration and
error (so services need not time their own queries), and serve() starts the
HTTP endpoint on the service's metrics port.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Duration of database operations",
    ["operation", "table"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_QUERY_ERRORS = Counter(
    "db_query_errors", "Failed database operations", ["operation", "error_type"]
)
DB_SLOW_QUERIES = Counter(
    "db_slow_queries", "Statements over DB_SLOW_QUERY_MS, logged with their plan", ["operation"]
)
DB_POOL_ACTIVE = Gauge("db_pool_active_connections", "Connections checked out of the pool")
DB_POOL_IDLE = Gauge("db_pool_idle_connections", "Idle connections in the pool")
DB_POOL_SIZE = Gauge("db_pool_size", "Configured size of the process's pools")
DB_POOL_OVERFLOW = Gauge("db_pool_overflow_connections", "Connections open above the pool size")
STYLE_PROFILE_SAVES = Counter("db_style_profile_saves", "Style profiles saved")
GENERATION_HISTORY_SAVES = Counter("db_generation_history_saves", "Generations recorded")
SIMILARITY_SEARCHES = Counter("db_similarity_searches", "Similarity searches served", ["kind"])
SIMILARITY_RECALL = Gauge("similarity_index_recall", "Recall@k of the vector index (canary)", ["k"])
CACHE_HIT_RATE = Gauge("db_cache_hit_rate", "Cache hit rate over both tiers since start")
CACHE_REQUESTS = Counter(
    "cache_tier_requests", "Cache lookups by tier and result", ["tier", "result"]
)
CACHE_ERRORS = Counter("db_cache_errors", "Cache errors by kind", ["error_type"])

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to sending its status",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


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
    """The HTTP endpoint Prometheus scrapes; every path answers with the exposition."""

    def __init__(self, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host)
        self.port: int = self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
