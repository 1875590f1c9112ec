"""The Redis tier: versioned entries under a generation of the namespace, filled by Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Raised by every call of this module when Redis cannot be used.
__all__ = ["RedisError", "RedisTier", "error_kind"]

EncodableT = bytes | str | int | float


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "redis_timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "redis_connection"
    return "redis_error"


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _script(name: str) -> str:
    lua = resources.files("services.cache_gateway") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class RedisTier:
    """Key layout (prefix P, generation G): P:gen, P:G:p:<artist> (hash m, v, d, f),
    P:G:sizes, P:G:resident, P:G:bytes for the byte budget, and P:reads (read counts)."""

    def __init__(
        self, url: str, *, prefix: str, ttl_seconds: int, max_bytes: int, timeout: float
    ) -> None:
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.max_bytes = max_bytes
        # No retries: a failed call trips the breaker instead of waiting again.
        common: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, **common)
        # Subscribers wait for messages indefinitely; liveness is checked by pings.
        self.subscriber_client = redis.Redis.from_url(url, socket_timeout=None, **common)
        self.gen_key = f"{prefix}:gen"
        self.reads_key = f"{prefix}:reads"
        self.channel = f"{prefix}:inv"
        self._fill = self.client.register_script(_script("fill"))
        self._invalidate = self.client.register_script(_script("invalidate"))
        self._recover = self.client.register_script(_script("recover"))
        self._heartbeat = self.client.register_script(_script("heartbeat"))
        self.replicas_key = f"{prefix}:replicas"

    def ack_channel(self, replica: str) -> str:
        return f"{self.prefix}:ack:{replica}"

    def _ns(self, gen: int) -> str:
        return f"{self.prefix}:{gen}"

    async def close(self) -> None:
        for client in (self.client, self.subscriber_client):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 1.0)

    async def ping(self) -> None:
        await self.client.ping()

    async def reset(self) -> None:
        """Drop pooled connections: after a Redis restart each would fail once on use."""
        await self.client.connection_pool.disconnect()

    async def heartbeat(self, replica: str, *, lag: float, forget: float) -> int:
        """Say this replica is connected; returns how many replicas have gone silent."""
        args: list[EncodableT] = [replica, lag, forget]
        return int(await self._heartbeat(keys=[self.replicas_key], args=args))

    async def leave(self, replica: str) -> None:
        await self.client.zrem(self.replicas_key, replica)

    async def get(self, name: str, gen: int) -> tuple[int, bytes, float] | None:
        """The cached copy: (version, encoded profile, fetched-at), or None."""
        version, blob, fetched = await self.client.hmget(f"{self._ns(gen)}:p:{name}", "v", "d", "f")
        if version is None or blob is None:
            return None
        return int(version), _raw(blob), float(fetched or 0)

    async def fill(self, name: str, gen: int, version: int, blob: bytes, fetched_at: float) -> int:
        """1 filled, 0 refused (a newer version is known or cached), -1 generation changed."""
        args: list[EncodableT] = [
            self.prefix,
            gen,
            name,
            version,
            blob,
            repr(fetched_at),
            self.ttl,
            self.max_bytes,
        ]
        return int(await self._fill(keys=[self.gen_key], args=args))

    async def invalidate(self, name: str, version: int, message: str) -> int:
        """Raise the marker, drop older copies and publish; returns the subscriber count."""
        args: list[EncodableT] = [self.prefix, name, version, self.ttl, self.channel, message]
        _, receivers = await self._invalidate(keys=[self.gen_key], args=args)
        return int(receivers)

    async def recover(self, known_gen: int | None, missed: dict[str, int], *, bump: bool) -> int:
        """Adopt or move past the generation (see recover.lua); replay the missed drops."""
        known = "" if known_gen is None else known_gen
        args: list[EncodableT] = [self.prefix, known, self.ttl, "1" if bump else "0"]
        for name, version in missed.items():
            args += [name, version]
        return int(await self._recover(keys=[self.gen_key], args=args))

    async def publish(self, channel: str, message: str) -> int:
        return int(await self.client.publish(channel, message))

    async def add_reads(self, counts: dict[str, int], gen: int) -> None:
        """Read counts rank artists for eviction (least-read first) and for warm-up."""
        pipe = self.client.pipeline(transaction=False)
        resident = f"{self._ns(gen)}:resident"
        for name, count in counts.items():
            pipe.zincrby(self.reads_key, count, name)
            pipe.zadd(resident, {name: count}, xx=True, incr=True)
        await pipe.execute()

    async def most_read(self, n: int) -> list[str]:
        names = await self.client.zrevrange(self.reads_key, 0, n - 1)
        return [_raw(name).decode() for name in names]

    async def usage(self, gen: int) -> tuple[int, int]:
        """Entries and bytes of the current generation."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{self._ns(gen)}:resident")
        pipe.get(f"{self._ns(gen)}:bytes")
        entries, used = await pipe.execute()
        return int(entries), int(used or 0)

    async def drop_generation(self, gen: int) -> int:
        """Unlink every key of an abandoned generation (run in the background)."""
        dropped = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{self._ns(gen)}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                dropped += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            dropped += await self.client.unlink(*batch)
        return dropped
