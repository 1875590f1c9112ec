"""The profile store's side of coherence: Redis is the authority on which copies are stale.

After a commit the store raises each artist's marker and drops older copies (one script per
artist, pipelined), publishes one message for the call, and waits until every gateway heard
from within the live window has acknowledged it. A gateway outside that window has already
stopped trusting its in-process copies (see RedisSettings.redis_live_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from importlib import resources

from redis.asyncio.client import PubSub

from shared.cache.client import (
    FAILURES,
    Subscriber,
    connect,
    error_kind,
    script,
    warn_if_markers_evictable,
)
from shared.cache.keys import Keys
from shared.cache.protocol import Drop, Message, parse_ack
from shared.settings import RedisSettings

log = logging.getLogger(__name__)

_PING = b"ping"
# Left of the caller's budget for the answer to travel back.
_MARGIN_SECONDS = 0.02


class Authority:
    """Never raises into a save: invalidate() answers True or False."""

    def __init__(self, settings: RedisSettings) -> None:
        self.client = connect(settings)
        self.keys = Keys(settings.redis_key_prefix)
        self.member = f"store-{uuid.uuid4().hex[:12]}"
        self.inbox = self.keys.inbox(self.member)
        self.interval = settings.redis_health_interval_seconds
        # Silent this long, the inbox subscription is reopened. Lenient: a loaded event loop
        # must not drop acknowledgements in flight; correctness never depends on it.
        self.silence = 2 * settings.redis_live_seconds
        self.live_window = settings.redis_live_seconds
        self.subscriber = Subscriber(settings, self.client)
        lua = resources.files("shared.cache") / "lua"
        self._invalidate_body = (lua / "invalidate.lua").read_text()
        self._live = script(self.client, "live")
        # Monotonic time of the last ping that came back through the inbox subscription.
        self._heard = float("-inf")
        self._subscribed = False
        self._waiting: dict[str, tuple[set[str], asyncio.Event]] = {}

    @property
    def listening(self) -> bool:
        """Subscribed to the inbox, and a ping came back through it."""
        return self._subscribed and self._heard > float("-inf")

    async def close(self) -> None:
        await self.subscriber.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    async def invalidate(self, drops: Sequence[Drop], budget: float) -> bool:
        """True once Redis holds the markers and every live gateway has applied the drops."""
        if not drops:
            return True
        message = Message(uuid.uuid4().hex, self.inbox, list(drops))
        try:
            async with asyncio.timeout(max(0.0, budget - _MARGIN_SECONDS)):
                await self.drop(drops)
                members = await self._live(keys=[self.keys.gateways], args=[self.live_window])
                live = {_text(m) for m in members}
                if not live:
                    return True
                if not self.listening:
                    # Redis has the markers; the gateways will hear, but we could not tell.
                    await self.client.publish(self.keys.channel, message.encode())
                    return False
                pending = self._waiting[message.id] = (live, asyncio.Event())
                await self.client.publish(self.keys.channel, message.encode())
                await pending[1].wait()
            return True
        except FAILURES as exc:
            waiting = self._waiting.get(message.id)
            log.info(
                "invalidation of %d profiles not confirmed (%s)",
                len(drops),
                f"{len(waiting[0])} gateways silent" if waiting is not None else error_kind(exc),
            )
            return False
        finally:
            self._waiting.pop(message.id, None)

    async def drop(self, drops: Sequence[Drop]) -> None:
        """Raise the markers and drop older copies in Redis (no message, no waiting)."""
        # EVAL rather than EVALSHA: a pipeline cannot reload a script Redis lost on restart.
        pipe = self.client.pipeline(transaction=False)
        for drop in drops:
            pipe.eval(self._invalidate_body, 2, *self.keys.artist(drop.name), drop.version)
        await pipe.execute()

    async def run(self) -> None:
        """Background task: keeps the inbox subscription, checked by pings through it."""
        while True:
            listener: asyncio.Task[None] | None = None
            try:
                pubsub = await self.subscriber.open(self.inbox)
                await warn_if_markers_evictable(self.client)
                listener = asyncio.create_task(self._listen(pubsub))
                self._heard = float("-inf")
                self._subscribed = True
                opened = time.monotonic()
                while not listener.done():
                    await self.client.publish(self.inbox, _PING)
                    await asyncio.wait({listener}, timeout=self.interval)
                    silent = time.monotonic() - max(self._heard, opened)
                    if silent > self.silence:
                        raise TimeoutError("the inbox subscription went silent")
                listener.result()
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                log.warning("store's Redis subscription lost (%s); reconnecting", error_kind(exc))
            finally:
                self._subscribed = False
                if listener is not None:
                    listener.cancel()
                    await asyncio.wait({listener}, timeout=1.0)
                await self.subscriber.close()
            await asyncio.sleep(self.interval)

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None:
                continue
            data = message["data"]
            if data == _PING:
                self._heard = time.monotonic()
                continue
            parsed = parse_ack(data)
            if parsed is None:
                continue
            pending = self._waiting.get(parsed[0])
            if pending is not None:
                pending[0].discard(parsed[1])
                if not pending[0]:
                    pending[1].set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
