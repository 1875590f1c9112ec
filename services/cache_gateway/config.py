"""Settings of the cache gateway: tier sizes, TTLs, Redis timeouts and the breaker."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import RedisSettings, ServiceSettings


class Settings(ServiceSettings, RedisSettings):
    """Settings of the cache gateway process; field names are the environment variables."""

    # In-process tier: bounded by entries and by bytes, with a short TTL.
    cache_memory_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    cache_memory_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    cache_memory_ttl_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # While Redis (and so invalidation from other replicas) is unreachable, in-process
    # copies older than this are not served: the staleness bound of degraded mode.
    cache_degraded_ttl_seconds: float = Field(default=2.0, gt=0, le=300)
    cache_negative_ttl_seconds: float = Field(default=5.0, ge=0, le=3600)
    cache_compress_threshold_bytes: int = Field(default=1024, ge=0)
    cache_store_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # How long InvalidateProfile waits for the other replicas to confirm the drop.
    cache_ack_timeout_seconds: float = Field(default=0.2, ge=0, le=5)
    cache_warm_top_n: int = Field(default=100, ge=1, le=10_000)
    # Byte budget of the gateway's Redis entries (the 50 GB cap); least-read evicted first.
    redis_max_bytes: int = Field(default=50 * 1024**3, ge=1024)
    # Connect and socket timeout of every Redis call: the longest a request waits on Redis.
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    # The breaker stays open this long after a failure, doubling up to 8x while Redis stays down.
    redis_breaker_seconds: float = Field(default=1.0, gt=0, le=300)
    redis_health_interval_seconds: float = Field(default=0.25, gt=0, le=60)
    redis_key_prefix: str = Field(default="stylebase:cg", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _coherent_ttls(self) -> Settings:
        if self.cache_degraded_ttl_seconds > self.cache_memory_ttl_seconds:
            raise ValueError("CACHE_DEGRADED_TTL_SECONDS must not exceed CACHE_MEMORY_TTL_SECONDS")
        return self

    @property
    def staleness_bound_seconds(self) -> float:
        """How long after a write returns a replica may still serve the older copy."""
        # Detecting a lost Redis takes a ping (interval + timeout); noticing that another
        # replica lost it takes its silence (4 intervals) and our next heartbeat.
        return (
            self.cache_degraded_ttl_seconds
            + 5 * self.redis_health_interval_seconds
            + self.redis_timeout_seconds
        )
