"""Counters of the gateway, mirrored into the shared Prometheus series."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shared.metrics import CACHE_ERRORS, CACHE_HIT_RATE, CACHE_REQUESTS

# Bound once: labels() on every request would cost a dictionary lookup and a lock.
_MEMORY_HIT = CACHE_REQUESTS.labels(tier="in_process", result="hit")
_MEMORY_MISS = CACHE_REQUESTS.labels(tier="in_process", result="miss")
_REDIS_HIT = CACHE_REQUESTS.labels(tier="redis", result="hit")
_REDIS_MISS = CACHE_REQUESTS.labels(tier="redis", result="miss")
_NEGATIVE_HIT = CACHE_REQUESTS.labels(tier="in_process", result="negative_hit")
_STORE_FETCH = CACHE_REQUESTS.labels(tier="store", result="fetch")


@dataclass
class Stats:
    memory_hits: int = 0
    memory_misses: int = 0
    redis_hits: int = 0
    redis_misses: int = 0
    negative_hits: int = 0
    store_fetches: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def memory_hit(self) -> None:
        self.memory_hits += 1
        _MEMORY_HIT.inc()

    def memory_miss(self) -> None:
        self.memory_misses += 1
        _MEMORY_MISS.inc()

    def redis_hit(self) -> None:
        self.redis_hits += 1
        _REDIS_HIT.inc()

    def redis_miss(self) -> None:
        self.redis_misses += 1
        _REDIS_MISS.inc()

    def negative_hit(self) -> None:
        self.negative_hits += 1
        _NEGATIVE_HIT.inc()

    def store_fetch(self) -> None:
        self.store_fetches += 1
        _STORE_FETCH.inc()

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        CACHE_ERRORS.labels(error_type=kind).inc()

    @property
    def hit_rate(self) -> float:
        """Requests answered by a cache tier (negatives included) over all requests."""
        total = self.memory_hits + self.memory_misses + self.negative_hits
        hits = self.memory_hits + self.redis_hits + self.negative_hits
        return hits / total if total else 0.0

    def publish_hit_rate(self) -> None:
        CACHE_HIT_RATE.set(self.hit_rate)


def rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0
