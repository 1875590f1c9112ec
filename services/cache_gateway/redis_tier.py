"""The Redis tier: one versioned entry per artist beside its marker, filled by a Lua script."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster

from shared.cache.client import Client, connect, script
from shared.cache.keys import Keys
from shared.settings import RedisSettings

# The read-count ranking keeps at most this many artists (the most read).
MAX_RANKED = 100_000


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class RedisTier:
    """Keys (see shared.cache.keys): the marker P:{tag}:m:<artist> and the entry
    P:{tag}:e:<artist> (hash v, d, f) of each artist, P:reads, P:gateways."""

    def __init__(self, settings: RedisSettings, *, max_ranked: int = MAX_RANKED) -> None:
        self.keys = Keys(settings.redis_key_prefix)
        self.max_ranked = max_ranked
        self.ttl = settings.redis_ttl_seconds
        self.client: Client = connect(settings)
        self._fill = script(self.client, "fill")
        self._heartbeat = script(self.client, "heartbeat")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    async def ping(self) -> None:
        await self.client.ping()

    async def reset(self) -> None:
        """Drop pooled connections: after a Redis restart each would fail once on use."""
        if isinstance(self.client, RedisCluster):
            # Also forgets the slot map: the next command rediscovers the nodes.
            await asyncio.wait_for(self.client.aclose(), 1.0)
        else:
            await asyncio.wait_for(self.client.connection_pool.disconnect(), 1.0)

    async def heartbeat(self, member: str, *, forget: float) -> None:
        await self._heartbeat(keys=[self.keys.gateways], args=[member, forget])

    async def leave(self, member: str) -> None:
        await self.client.zrem(self.keys.gateways, member)

    async def get(self, name: str) -> tuple[int, bytes, float] | None:
        """The cached copy: (version, encoded profile, fetched-at), or None."""
        version, blob, fetched = await self.client.hmget(self.keys.entry(name), ["v", "d", "f"])
        if version is None or blob is None:
            return None
        return int(version), _raw(blob), float(fetched or 0)

    async def fill(self, name: str, version: int, blob: bytes, fetched_at: float) -> int:
        """1 filled, 0 refused (a newer version is known or cached)."""
        args: list[bytes | str | int] = [version, blob, repr(fetched_at), self.ttl]
        return int(await self._fill(keys=self.keys.artist(name), args=args))

    async def publish(self, channel: str, message: str | bytes) -> None:
        await self.client.publish(channel, message)

    async def add_reads(self, counts: Mapping[str, int]) -> None:
        """Read counts of artists that exist rank warm-up; the ranking is capped."""
        pipe = self.client.pipeline(transaction=False)
        for name, count in counts.items():
            pipe.zincrby(self.keys.reads, count, name)
        pipe.zremrangebyrank(self.keys.reads, 0, -(self.max_ranked + 1))
        await pipe.execute()

    async def most_read(self, n: int) -> list[str]:
        names = await self.client.zrevrange(self.keys.reads, 0, n - 1)
        return [_raw(name).decode() for name in names]

    async def usage(self) -> tuple[int, int]:
        """Keys and used_memory of the whole server (every master of a cluster)."""
        if isinstance(self.client, RedisCluster):
            nodes = self.client.get_primaries()
            sizes = await self.client.dbsize(target_nodes=nodes)
            infos = await self.client.info("memory", target_nodes=nodes)
            keys = sum(sizes.values()) if isinstance(sizes, dict) else int(sizes)
            memory = [infos] if "used_memory" in infos else list(infos.values())
            return keys, sum(int(info.get("used_memory", 0)) for info in memory)
        keys = int(await self.client.dbsize())
        info = await self.client.info("memory")
        return keys, int(info.get("used_memory", 0))
