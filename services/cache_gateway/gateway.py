"""The read path (in-process tier → Redis → store, single-flight) and warm-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from services.cache_gateway.codec import decode, encode
from services.cache_gateway.coherence import FAILURES, RedisLink
from services.cache_gateway.config import Settings
from services.cache_gateway.flight import SingleFlight
from services.cache_gateway.memory import Entry, MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from services.cache_gateway.stats import Stats
from services.cache_gateway.store_client import StoreClient, StoreUnreachable
from shared.errors import ArtistNotFound, FailedPrecondition, NotFound
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as pb
from stylebase.common.v1 import common_pb2

log = logging.getLogger(__name__)

IN_PROCESS = pb.SERVED_FROM_IN_PROCESS
REDIS = pb.SERVED_FROM_REDIS
STORE = pb.SERVED_FROM_STORE
WARM_CONCURRENCY = 8
MAX_PENDING_READS = 100_000


@dataclass(frozen=True, slots=True)
class Served:
    profile: common_pb2.StyleProfile
    served_from: pb.ServedFrom.ValueType
    stale: bool
    # Wall-clock time the copy was read from the store.
    fetched_at: float


@dataclass(frozen=True, slots=True)
class Warmed:
    warmed: int
    not_found: int
    failed: int


class Gateway:
    def __init__(
        self,
        settings: Settings,
        memory: MemoryTier,
        store: StoreClient,
        redis: RedisTier | None,
        stats: Stats,
    ) -> None:
        self.settings = settings
        self.memory = memory
        self.store = store
        self.redis = redis
        self.stats = stats
        self.link: RedisLink | None = None
        self.flights: SingleFlight[tuple[str, int], Served] = SingleFlight()
        self.store_reachable = True
        # Read counts not yet sent to Redis, and all counts while Redis is away.
        self.pending_reads: Counter[str] = Counter()
        self.read_totals: Counter[str] = Counter()
        self._memory_ttl = settings.cache_memory_ttl_seconds
        self._degraded_ttl = settings.cache_degraded_ttl_seconds

    @property
    def coherent(self) -> bool:
        """The store's invalidations reach this gateway (never without Redis)."""
        return self.link is not None and self.link.coherent

    # -- read path ---------------------------------------------------------------------

    async def get(self, name: str, min_version: int) -> Served:
        memory = self.memory
        now = time.monotonic()
        required = max(min_version, memory.floor(name))
        max_age = self._memory_ttl if self.coherent else self._degraded_ttl
        entry = memory.get(name, required, now, max_age)
        if entry is not None:
            self.stats.memory_hit()
            self.pending_reads[name] += 1
            return Served(entry.profile, IN_PROCESS, not self.store_reachable, entry.fetched_at)
        negative_age = min(max_age, self.settings.cache_negative_ttl_seconds)
        negative = memory.get_negative(name, required, now, negative_age)
        if negative is not None:
            self.stats.negative_hit()
            if isinstance(negative.error, NotFound):
                raise NotFound(
                    negative.error.message,
                    reason=negative.error.reason,
                    metadata=negative.error.metadata,
                )
            raise ArtistNotFound(name)
        self.stats.memory_miss()
        served = await self.flights.run((name, required), lambda: self._load(name, required))
        # Only artists that exist are ranked: unknown names cannot grow the ranking.
        self.pending_reads[name] += 1
        return served

    async def _load(self, name: str, required: int) -> Served:
        started = time.monotonic()
        epoch = self.memory.epoch
        link = self.link
        link_epoch = link.epoch if link is not None and link.up else None
        if link_epoch is not None and self.redis is not None and link is not None:
            try:
                cached = await self.redis.get(name)
            except FAILURES as exc:
                link.fail(exc)
                cached = None
            if cached is not None and cached[0] >= max(required, self.memory.floor(name)):
                version, blob, fetched_at = cached
                try:
                    profile = decode(blob)
                except Exception:
                    # A copy this build cannot read is a miss, not a failed request.
                    self.stats.error("redis_decode")
                    return await self._fetch(
                        name, required, started=started, epoch=epoch, link_epoch=link_epoch
                    )
                self.stats.redis_hit()
                entry = Entry(profile, version, fetched_at, started, profile.ByteSize())
                self.memory.put(name, entry, epoch)
                return Served(profile, REDIS, not self.store_reachable, fetched_at)
            self.stats.redis_miss()
        return await self._fetch(
            name, required, started=started, epoch=epoch, link_epoch=link_epoch
        )

    async def _fetch(
        self, name: str, required: int, *, started: float, epoch: int, link_epoch: int | None
    ) -> Served:
        """Read the store and fill both tiers; the fills refuse anything older than known."""
        floor_at_start = self.memory.floor(name)
        self.stats.store_fetch()
        try:
            profile = await self.store.get_profile(name)
        except NotFound as exc:
            self.store_reachable = True
            if self.settings.cache_negative_ttl_seconds > 0:
                self.memory.put_negative(name, floor_at_start, started, epoch, exc)
            raise
        except StoreUnreachable as exc:
            self.stats.error(exc.kind)
            if exc.kind != "store_error":
                self.store_reachable = False
            fallback = self.memory.peek(name, max(required, self.memory.floor(name)))
            if fallback is None:
                raise
            return Served(fallback.profile, IN_PROCESS, True, fallback.fetched_at)
        self.store_reachable = True
        if profile.version < required:
            raise FailedPrecondition(
                f"the profile store has version {profile.version} of '{name}', "
                f"below min_version {required}"
            )
        fetched_at = time.time()
        entry = Entry(profile, profile.version, fetched_at, started, profile.ByteSize())
        self.memory.put(name, entry, epoch)
        link = self.link
        # Not across a reconnect: Redis may have restarted and lost the marker meanwhile.
        if link is not None and link.up and link.epoch == link_epoch and self.redis is not None:
            blob = encode(profile, compress_above=self.settings.cache_compress_threshold_bytes)
            try:
                await self.redis.fill(name, profile.version, blob, fetched_at)
            except FAILURES as exc:
                link.fail(exc)
        return Served(profile, STORE, False, fetched_at)

    # -- warm-up -----------------------------------------------------------------------

    async def most_read(self, n: int) -> list[str]:
        """Redis's ranking (all replicas), topped up from this replica's own counts."""
        ranked: list[str] = []
        link = self.link
        if link is not None and link.up and self.redis is not None:
            try:
                ranked = await self.redis.most_read(n)
            except FAILURES as exc:
                link.fail(exc)
        local = (self.read_totals + self.pending_reads).most_common(n)
        ranked.extend(name for name, _ in local)
        return list(dict.fromkeys(ranked))[:n]

    async def warm(self, names: Sequence[str], top_n: int) -> Warmed:
        """Load profiles from the store into both tiers (the most-read when none are named)."""
        targets = list(dict.fromkeys(names)) or await self.most_read(top_n)
        gate = asyncio.Semaphore(WARM_CONCURRENCY)
        outcome: Counter[str] = Counter()

        async def one(name: str) -> None:
            async with gate:
                link = self.link
                link_epoch = link.epoch if link is not None and link.up else None
                try:
                    served = await self._fetch(
                        name,
                        0,
                        started=time.monotonic(),
                        epoch=self.memory.epoch,
                        link_epoch=link_epoch,
                    )
                except NotFound:
                    outcome["not_found"] += 1
                except (StoreUnreachable, FailedPrecondition):
                    outcome["failed"] += 1
                else:
                    outcome["warmed" if served.served_from == STORE else "failed"] += 1

        await asyncio.gather(*(one(name) for name in targets))
        log.info("warmed %d profiles (%s)", outcome["warmed"], dict(outcome))
        return Warmed(outcome["warmed"], outcome["not_found"], outcome["failed"])

    # -- background work ---------------------------------------------------------------

    async def flush_reads(self) -> None:
        """Send read counts to Redis (eviction order, warm-up ranking) off the hot path."""
        self.stats.publish_hit_rate()
        if not self.pending_reads:
            return
        batch, self.pending_reads = self.pending_reads, Counter()
        if len(self.read_totals) < MAX_PENDING_READS:
            self.read_totals.update(batch)
        link = self.link
        if link is None or not link.up or self.redis is None:
            return
        try:
            await self.redis.add_reads(batch)
        except FAILURES as exc:
            link.fail(exc)

    async def watch_store(self) -> None:
        """Keep store_reachable current, so hits while the store is down say stale."""
        self.store_reachable = await self.store.serving()

    async def redis_usage(self) -> tuple[int, int]:
        link = self.link
        if link is None or not link.up or self.redis is None:
            return 0, 0
        try:
            return await self.redis.usage()
        except FAILURES as exc:
            link.fail(exc)
            return 0, 0
