"""Coherence between replicas through Redis: invalidations by pub/sub with acknowledgements,
the circuit breaker, health of the Redis dependency, and recovery after an outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from services.cache_gateway.breaker import Breaker
from services.cache_gateway.memory import MemoryTier
from services.cache_gateway.redis_tier import RedisError, RedisTier, error_kind
from services.cache_gateway.stats import Stats
from shared.errors import Unavailable

log = logging.getLogger(__name__)

# Invalidations Redis missed are replayed on recovery; past this many, the generation
# is bumped instead, which drops every copy filled before the outage.
MAX_MISSED = 100_000
# Left of the caller's deadline for the answer to travel back.
ACK_MARGIN_SECONDS = 0.02
# A replica silent this many health intervals may have missed invalidations (others then
# serve in degraded mode); silent for PEER_FORGET_SECONDS, it is taken to be gone.
PEER_LAG_INTERVALS = 4
PEER_FORGET_SECONDS = 30.0
FAILURES = (RedisError, OSError, TimeoutError)


@dataclass
class _Ack:
    needed: int | None = None
    got: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.needed is not None and self.got >= self.needed:
            self.done.set()


class RedisLink:
    """While `up`, every replica hears every invalidation before InvalidateProfile returns."""

    def __init__(
        self,
        tier: RedisTier,
        memory: MemoryTier,
        stats: Stats,
        *,
        breaker_seconds: float,
        health_interval: float,
        ack_timeout: float,
        on_state: Callable[[bool], Awaitable[None]],
        on_recovered: Callable[[], Awaitable[Any]],
    ) -> None:
        self.tier = tier
        self.memory = memory
        self.stats = stats
        self.breaker = Breaker(breaker_seconds)
        self.health_interval = health_interval
        self.ack_timeout = ack_timeout
        self.on_state = on_state
        self.on_recovered = on_recovered
        self.replica = uuid.uuid4().hex[:12]
        self.gen: int | None = None
        self.up = False
        # Some other replica has lost Redis: it may be dropping invalidations we never hear.
        self.peers_lagging = False
        self.missed: dict[str, int] = {}
        self.missed_overflow = False
        self._seq = 0
        self._acks: dict[str, _Ack] = {}
        self._wake = asyncio.Event()
        self._subscriber: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def coherent(self) -> bool:
        """Every replica hears every invalidation: the long in-process TTL is safe."""
        return self.up and not self.peers_lagging

    # -- failures and the breaker ------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """A Redis call failed: stop using Redis until the monitor has reconnected."""
        self.stats.error(error_kind(exc))
        if self.up:
            log.warning("Redis unreachable, serving in degraded mode: %s", exc)
            self.up = False
            self.breaker.trip(time.monotonic())
            self._wake.set()

    def remember(self, name: str, version: int) -> None:
        """An invalidation Redis did not get: replayed when it is back."""
        if len(self.missed) >= MAX_MISSED and name not in self.missed:
            self.missed.clear()
            self.missed_overflow = True
        self.missed[name] = max(version, self.missed.get(name, 0))

    # -- invalidation ------------------------------------------------------------------

    async def invalidate(
        self, name: str, version: int, deleted: bool, *, time_left: float | None = None
    ) -> bool:
        """Drop copies below version in Redis and on every replica.

        Raises Unavailable when Redis is unreachable or some replica did not confirm in
        time: the caller (the store's outbox) then retries, instead of believing that
        every replica has dropped its copy. This replica's own tier is already done.
        """
        if not self.up:
            self.remember(name, version)
            raise Unavailable(f"Redis is unreachable; '{name}' was dropped here only; retry")
        self._seq += 1
        msg_id = f"{self.replica}:{self._seq}"
        ack = self._acks[msg_id] = _Ack()
        message = json.dumps(
            {"t": "i", "o": self.replica, "id": msg_id, "n": name, "v": version, "d": deleted}
        )
        wait = self.ack_timeout
        if time_left is not None:
            wait = max(0.0, min(wait, time_left - ACK_MARGIN_SECONDS))
        try:
            # Every subscribed replica, this one included, acknowledges once it has
            # applied the drop: when this returns, no replica serves below version.
            ack.needed = await self.tier.invalidate(name, version, message)
            ack.check()
            await asyncio.wait_for(ack.done.wait(), wait)
        except TimeoutError:
            self.stats.error("ack_timeout")
            raise Unavailable(
                f"{ack.got} of {ack.needed} gateway replicas confirmed the invalidation of "
                f"'{name}' in time; retry"
            ) from None
        except FAILURES as exc:
            self.fail(exc)
            self.remember(name, version)
            raise Unavailable(
                f"Redis failed ({error_kind(exc)}); '{name}' was dropped here only; retry"
            ) from None
        finally:
            del self._acks[msg_id]
        return True

    def apply(self, name: str, version: int, deleted: bool) -> None:
        self.memory.raise_floor(name, version)
        if deleted:
            self.memory.put_negative(name, version, time.monotonic(), self.memory.epoch)

    # -- the subscriber ----------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        ack_channel = self.tier.ack_channel(self.replica).encode()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None:
                    continue
                if message["channel"] == ack_channel:
                    ack = self._acks.get(message["data"].decode())
                    if ack is not None:
                        ack.got += 1
                        ack.check()
                else:
                    await self._on_message(json.loads(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(exc)
        finally:
            # Bounded: the subscriber's socket has no timeout, and Redis may be frozen.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]

    async def _on_message(self, body: dict[str, Any]) -> None:
        if body["t"] == "i":
            self.apply(str(body["n"]), int(body["v"]), bool(body["d"]))
            if body.get("id"):
                await self.tier.publish(self.tier.ack_channel(str(body["o"])), str(body["id"]))
        elif body["t"] == "g":
            self._adopt(int(body["g"]))

    def _adopt(self, gen: int) -> None:
        if self.gen is None or gen > self.gen:
            log.info("cache generation %s (was %s): in-process copies dropped", gen, self.gen)
            self.gen = gen
            self.memory.clear()

    # -- monitor and recovery ----------------------------------------------------------

    async def run(self) -> None:
        """Background task: pings while up, reconnects with backoff while down."""
        await self.on_state(False)
        try:
            while True:
                if self.up:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.health_interval)
                    self._wake.clear()
                    if self.up:
                        await self._heartbeat()
                    if self.up and (self._subscriber is None or self._subscriber.done()):
                        self.fail(RedisConnectionError("the subscription was lost"))
                    if not self.up:
                        await self.on_state(False)
                    continue
                await asyncio.sleep(self.breaker.wait(time.monotonic()))
                try:
                    await self._connect()
                except FAILURES as exc:
                    # Counted apart: these are the breaker's probes, not requests.
                    self.stats.error("redis_reconnect")
                    log.debug("Redis still unreachable: %s", exc)
                    self.breaker.trip(time.monotonic())
                    await self._stop_subscriber()
                    continue
                await self.on_state(True)
                self._spawn(self.on_recovered())
        finally:
            await self._stop_subscriber()
            for task in list(self._tasks):
                task.cancel()
            if self.up:
                # Leaving cleanly, so the others do not wait for this replica to come back.
                with contextlib.suppress(*FAILURES):
                    await self.tier.leave(self.replica)

    async def _heartbeat(self) -> None:
        lag = self.health_interval * PEER_LAG_INTERVALS
        try:
            lagging = await self.tier.heartbeat(self.replica, lag=lag, forget=PEER_FORGET_SECONDS)
        except FAILURES as exc:
            self.fail(exc)
            return
        if bool(lagging) != self.peers_lagging:
            log.warning(
                "%d other replicas have lost Redis: in-process copies kept for the degraded TTL"
                if lagging
                else "every replica reaches Redis again",
                lagging,
            )
        self.peers_lagging = bool(lagging)

    async def _connect(self) -> None:
        await self.tier.reset()
        await self.tier.ping()
        await self._stop_subscriber()
        pubsub = self.tier.subscriber_client.pubsub()
        await pubsub.subscribe(self.tier.channel, self.tier.ack_channel(self.replica))
        self._subscriber = asyncio.create_task(self._listen(pubsub))
        missed, overflow = dict(self.missed), self.missed_overflow
        known = self.gen
        gen = await self.tier.recover(known, missed, bump=overflow)
        # Messages from other replicas may have been lost while down: start cold.
        self.gen = gen
        self.memory.clear()
        for name, version in missed.items():
            message = json.dumps({"t": "i", "o": self.replica, "n": name, "v": version, "d": False})
            await self.tier.publish(self.tier.channel, message)
            if self.missed.get(name) == version:
                del self.missed[name]
        self.missed_overflow = self.missed_overflow and not overflow
        if known is not None and gen != known:
            await self.tier.publish(self.tier.channel, json.dumps({"t": "g", "g": gen}))
            self._spawn(self.tier.drop_generation(known))
        self.breaker.close()
        self.up = True
        await self._heartbeat()
        log.info("Redis reachable (generation %s, %d missed drops replayed)", gen, len(missed))

    async def _stop_subscriber(self) -> None:
        task, self._subscriber = self._subscriber, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await work
            except FAILURES as exc:
                self.fail(exc)
            except Exception:
                log.exception("background cache work failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
