"""Prometheus series shared by the services (names from the specification).

Services update these where the work happens; the HTTP endpoint that serves
them is started by the server builder.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Duration of database operations",
    ["operation", "table"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_QUERY_ERRORS = Counter(
    "db_query_errors", "Failed database operations", ["operation", "error_type"]
)
DB_POOL_ACTIVE = Gauge("db_pool_active_connections", "Connections checked out of the pool")
DB_POOL_IDLE = Gauge("db_pool_idle_connections", "Idle connections in the pool")
STYLE_PROFILE_SAVES = Counter("db_style_profile_saves", "Style profiles saved")
GENERATION_HISTORY_SAVES = Counter("db_generation_history_saves", "Generations recorded")
SIMILARITY_SEARCHES = Counter("db_similarity_searches", "Similarity searches served", ["kind"])
SIMILARITY_RECALL = Gauge("similarity_index_recall", "Recall@k of the vector index (canary)", ["k"])
CACHE_HIT_RATE = Gauge("db_cache_hit_rate", "Cache hit rate over both tiers since start")
CACHE_REQUESTS = Counter(
    "cache_tier_requests", "Cache lookups by tier and result", ["tier", "result"]
)
CACHE_ERRORS = Counter("db_cache_errors", "Cache errors by kind", ["error_type"])
