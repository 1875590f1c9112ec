"""Redis clients of the store and the gateways: one server or a Redis Cluster, the scripts,
and pub/sub connections (to one node: classic pub/sub reaches every node of a cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.settings import RedisSettings

log = logging.getLogger(__name__)

Client = Redis | RedisCluster
# What every Redis call of this package may raise when Redis cannot be used (a cluster
# with no reachable node raises RedisClusterException, which is no RedisError; redis-py's
# cluster client, sending on a node connection torn down under it while every node restarts,
# raises AttributeError from its missing stream writer).
FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError, AttributeError)
# Policies under which Redis may evict keys without a TTL: the markers.
_EVICTS_MARKERS = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "redis_timeout"
    if isinstance(exc, RedisConnectionError | OSError | RedisClusterException):
        return "redis_connection"
    return "redis_error"


def connect(settings: RedisSettings) -> Client:
    """The command client; no retries: a failed call is reported, not waited on again."""
    assert settings.redis_url is not None
    timeout = settings.redis_timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }
    if settings.redis_cluster:
        remap = settings.redis_cluster_addresses()
        if remap:
            options["address_remap"] = lambda address: remap.get(address, address)
        return RedisCluster.from_url(settings.redis_url, **options)
    return Redis.from_url(settings.redis_url, **options)


def script(client: Client, name: str) -> AsyncScript:
    """A script of lua/; EVALSHA routes it by the slot of its first key on a cluster."""
    body = (resources.files("shared.cache") / "lua" / f"{name}.lua").read_text()
    return client.register_script(body)


async def warn_if_markers_evictable(client: Client) -> None:
    """Best effort: managed Redis may refuse CONFIG."""
    try:
        found = await client.config_get("maxmemory-policy")
    except FAILURES as exc:
        log.info("could not read Redis's maxmemory-policy (%s); it must be volatile-lru", exc)
        return
    policies = _policies(found)
    if any(p in _EVICTS_MARKERS for p in policies):
        log.warning(
            "Redis maxmemory-policy is %s: it may evict version markers, and a lost marker "
            "lets an old copy be filled again; configure volatile-lru",
            ",".join(sorted(policies)),
        )


def _policies(found: Any) -> set[str]:
    """CONFIG GET's answer: a dict, or on a cluster possibly one dict per node."""
    if isinstance(found, dict):
        values = list(found.values())
        if values and all(isinstance(v, dict) for v in values):
            return set().union(*(_policies(v) for v in values))
        return {(v.decode() if isinstance(v, bytes) else str(v)) for v in values}
    return set()


class Subscriber:
    """Opens pub/sub connections, to the next node after one fails."""

    def __init__(self, settings: RedisSettings, client: Client) -> None:
        assert settings.redis_url is not None
        self.url = settings.redis_url
        self.client = client
        self.timeout = settings.redis_timeout_seconds
        self._turn = 0
        self._conn: Redis | None = None

    def _addresses(self) -> list[tuple[str, int] | None]:
        if isinstance(self.client, RedisCluster):
            nodes = self.client.get_nodes()
            if nodes:
                return [(node.host, int(node.port)) for node in nodes]
        return [None]

    async def open(self, *channels: str) -> PubSub:
        """Subscribed, with Redis's confirmation for every channel received."""
        await self.close()
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
        addresses = self._addresses()
        address = addresses[self._turn % len(addresses)]
        self._turn += 1
        options = parse_url(self.url)
        if address is not None:
            options["host"], options["port"] = address
        # No socket timeout: a subscriber waits for messages; its liveness is checked by pings.
        pool = ConnectionPool(
            **options,
            socket_timeout=None,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._conn = Redis(connection_pool=pool, decode_responses=False)
        pubsub = self._conn.pubsub()
        await asyncio.wait_for(pubsub.subscribe(*channels), self.timeout)
        confirmed = 0
        while confirmed < len(channels):
            waiting = pubsub.get_message(timeout=self.timeout)
            message = await asyncio.wait_for(waiting, self.timeout * 2)
            if message is None:
                raise RedisTimeoutError("Redis did not confirm the subscription in time")
            if message["type"] == "subscribe":
                confirmed += 1
        return pubsub

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.aclose(), 1.0)
