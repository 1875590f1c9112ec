"""Settings of the cache gateway: tier sizes, TTLs and the breaker (Redis's are shared)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import RedisSettings, ServiceSettings


class Settings(ServiceSettings, RedisSettings):
    """Settings of the cache gateway process; field names are the environment variables."""

    # In-process tier: bounded by entries and by bytes, with a short TTL.
    cache_memory_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    cache_memory_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    cache_memory_ttl_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # While this gateway cannot hear the store's invalidations (Redis lost or not
    # configured), in-process copies whose lookup began longer ago are not served.
    cache_degraded_ttl_seconds: float = Field(default=2.0, gt=0, le=300)
    cache_negative_ttl_seconds: float = Field(default=5.0, ge=0, le=3600)
    cache_compress_threshold_bytes: int = Field(default=1024, ge=0)
    cache_store_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    cache_warm_top_n: int = Field(default=100, ge=1, le=10_000)
    # The breaker stays open this long after a failure, doubling up to 8x while Redis stays down.
    redis_breaker_seconds: float = Field(default=1.0, gt=0, le=300)

    @model_validator(mode="after")
    def _coherent_ttls(self) -> Settings:
        if self.cache_degraded_ttl_seconds > self.cache_memory_ttl_seconds:
            raise ValueError("CACHE_DEGRADED_TTL_SECONDS must not exceed CACHE_MEMORY_TTL_SECONDS")
        return self

    @property
    def staleness_bound_seconds(self) -> float:
        """How long after a save returned a gateway that lost Redis may serve an older copy.

        Until its last ping is redis_detect_seconds old it still trusts its copies; from
        then on it serves only copies whose lookup began within the degraded TTL.
        """
        return self.cache_degraded_ttl_seconds + self.redis_detect_seconds
