"""This gateway's link to Redis: the invalidation subscription and its acknowledgements,
registration in the gateways set, liveness pings, the breaker and recovery.

The store is the writer and Redis the authority: the gateway only listens. While its pings
come back (each proves the registration and the subscription are live) its in-process
copies are kept for the full TTL; otherwise it is in degraded mode and serves them only
for CACHE_DEGRADED_TTL_SECONDS since their lookup began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from services.cache_gateway.breaker import Breaker
from services.cache_gateway.memory import MemoryTier
from services.cache_gateway.redis_tier import RedisTier
from services.cache_gateway.stats import Stats
from shared.cache.client import FAILURES, Subscriber, error_kind, warn_if_markers_evictable
from shared.cache.protocol import Message, ack
from shared.settings import RedisSettings

log = logging.getLogger(__name__)

# A gateway silent this long is dropped from the gateways set (it crashed without leaving).
FORGET_SECONDS = 30.0
_STOP_SECONDS = 1.0

__all__ = ["FAILURES", "RedisLink"]


class RedisLink:
    def __init__(
        self,
        tier: RedisTier,
        memory: MemoryTier,
        stats: Stats,
        settings: RedisSettings,
        *,
        breaker_seconds: float,
        on_state: Callable[[bool], Awaitable[None]],
        on_recovered: Callable[[], Awaitable[Any]],
    ) -> None:
        self.tier = tier
        self.memory = memory
        self.stats = stats
        self.breaker = Breaker(breaker_seconds)
        self.interval = settings.redis_health_interval_seconds
        self.detect = settings.redis_detect_seconds
        self.connect_timeout = 8 * settings.redis_timeout_seconds + 1.0
        self.on_state = on_state
        self.on_recovered = on_recovered
        self.member = f"gw-{uuid.uuid4().hex[:12]}"
        self.inbox = tier.keys.inbox(self.member)
        self.subscriber = Subscriber(settings, tier.client)
        # Redis calls are allowed (the breaker is closed).
        self.up = False
        # Bumped at each (re)connect: a lookup begun before cannot fill Redis after.
        self.epoch = 0
        # Monotonic send time of the newest ping that came back through the subscription.
        self._confirmed = float("-inf")
        self._connected_at = float("-inf")
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def coherent(self) -> bool:
        """Every invalidation the store confirms reaches this gateway first."""
        return self.up and time.monotonic() - self._confirmed < self.detect

    def fail(self, exc: BaseException) -> None:
        """A Redis call failed: stop using Redis until the monitor has reconnected."""
        self.stats.error(error_kind(exc))
        if self.up:
            log.warning("Redis unreachable, serving in degraded mode: %s", exc)
            self.up = False
            self.breaker.trip(time.monotonic())
            self._wake.set()

    def apply(self, message: Message) -> None:
        now = time.monotonic()
        for drop in message.drops:
            self.memory.raise_floor(drop.name, drop.version)
            if drop.deleted:
                self.memory.put_negative(drop.name, drop.version, now, self.memory.epoch)

    # -- the subscriber ----------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        inbox = self.inbox.encode()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None:
                    continue
                if message["channel"] == inbox:
                    sent = float(message["data"])
                    # A ping sent before this subscription existed proves nothing about it.
                    if sent >= self._connected_at:
                        self._confirmed = max(self._confirmed, sent)
                    continue
                body = Message.decode(message["data"])
                self.apply(body)
                # Only after applying: the store's save returns once every gateway said so.
                await self.tier.publish(body.reply_to, ack(body.id, self.member))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(exc)

    # -- monitor and recovery ----------------------------------------------------------

    async def run(self) -> None:
        """Background task: heartbeats while up, reconnects with backoff while down."""
        await self.on_state(False)
        try:
            while True:
                try:
                    await self._step()
                except Exception as exc:
                    # The monitor is the only way back to Redis: whatever a step raised, it
                    # counts as Redis lost and the monitor goes on.
                    log.exception("Redis monitor step failed; treating Redis as lost")
                    self.fail(exc)
                    await self._stop_listener()
                    await self.on_state(False)
                    await asyncio.sleep(self.interval)
        finally:
            await self._stop_listener()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=_STOP_SECONDS)
            if self.up:
                # Leaving cleanly, so the store stops waiting for this gateway at once.
                with contextlib.suppress(*FAILURES):
                    await asyncio.wait_for(self.tier.leave(self.member), _STOP_SECONDS)

    async def _step(self) -> None:
        if self.up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self.up:
                await self._heartbeat()
            if not self.up:
                await self._stop_listener()
                await self.on_state(False)
            return
        await asyncio.sleep(self.breaker.wait(time.monotonic()))
        try:
            # Bounded as a whole: a frozen peer must not hold the monitor.
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
        except FAILURES as exc:
            # Counted apart: these are the breaker's probes, not requests.
            self.stats.error("redis_reconnect")
            log.info("Redis still unreachable: %s", exc or type(exc).__name__)
            self.breaker.trip(time.monotonic())
            await self._stop_listener()
            return
        await self.on_state(True)
        self._spawn(self.on_recovered())

    async def _heartbeat(self) -> None:
        sent = time.monotonic()
        if self._listener is None or self._listener.done():
            self.fail(RedisConnectionError("the subscription was lost"))
            return
        # Degraded already (see coherent); reconnecting, which starts cold, waits longer so
        # that a briefly loaded event loop does not flush the tier.
        if sent - max(self._confirmed, self._connected_at) > 2 * self.detect + self.interval:
            self.fail(RedisConnectionError("the subscription went silent"))
            return
        try:
            await self.tier.heartbeat(self.member, forget=FORGET_SECONDS)
            # Comes back through the subscription: proves it and the registration are live.
            await self.tier.publish(self.inbox, repr(sent))
        except FAILURES as exc:
            self.fail(exc)

    async def _connect(self) -> None:
        await self.tier.reset()
        await self.tier.ping()
        await self._stop_listener()
        pubsub = await self.subscriber.open(self.tier.keys.channel, self.inbox)
        self._connected_at = time.monotonic()
        # Messages may have been missed while away: start cold, after subscribing.
        self.memory.clear()
        self.epoch += 1
        self._listener = asyncio.create_task(self._listen(pubsub))
        self.breaker.close()
        # Coherent only once a ping comes back: by then this gateway is registered (the
        # store waits for it) and has applied every message published before the ping.
        self.up = True
        await warn_if_markers_evictable(self.tier.client)
        await self._heartbeat()
        if not self.up:
            # fail() ran meanwhile (a request's Redis call, or the heartbeat): reported as
            # connected, health would say SERVING while this gateway serves degraded.
            raise RedisConnectionError("Redis failed again while connecting")
        log.info("Redis reachable: subscribed and registered as %s", self.member)

    async def _stop_listener(self) -> None:
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            # Never awaited directly: waiting must not swallow this task's own cancellation.
            await asyncio.wait({task}, timeout=_STOP_SECONDS)
            if not task.done():
                # Still unwinding on a frozen connection: keep a reference until it ends.
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await self.subscriber.close()

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                self.fail(exc)
            except Exception:
                log.exception("background cache work failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
