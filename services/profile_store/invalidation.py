"""Telling the cache gateway about committed saves and deletes: an outbox row, a call, a relay.

The outbox row is written in the save's own transaction, so an invalidation is never
lost: the RPC tries the gateway once after the commit, and a background relay retries
whatever the gateway has not acknowledged, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import Database
from shared.grpc.channels import service_channel
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc

log = logging.getLogger(__name__)

# The relay leaves a fresh row alone this long, so it does not race the RPC's own call.
_FIRST_RETRY_DELAY_SECONDS = 2.0
_RELAY_BATCH = 500
_CONCURRENT_CALLS = 32
# Codes that say the gateway will not answer anything soon; the rest of a batch is left
# to the relay instead of spending the deadline on calls that fail the same way.
_GIVE_UP_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED}

# Every statement that writes several outbox rows takes their locks in artist-name order, so a
# save, a batch and the relay never wait on each other in a cycle.
_LOCK_IN_NAME_ORDER = """
    WITH locked AS (
        SELECT o.artist_name FROM profile_invalidation_outbox o
        WHERE o.artist_name = ANY(CAST(:names AS text[]))
        ORDER BY o.artist_name FOR UPDATE
    )
"""
_ENQUEUE = text(
    """
    INSERT INTO profile_invalidation_outbox
        (artist_name, version, deleted, created_at, attempts, next_attempt_at)
    SELECT u.name, u.version, u.deleted, now(), 0,
           now() + make_interval(secs => :delay)
    FROM unnest(CAST(:names AS text[]), CAST(:versions AS bigint[]), CAST(:deleted AS bool[]))
         AS u(name, version, deleted)
    ORDER BY u.name
    ON CONFLICT (artist_name) DO UPDATE
        SET version = EXCLUDED.version, deleted = EXCLUDED.deleted,
            created_at = EXCLUDED.created_at, attempts = 0,
            next_attempt_at = EXCLUDED.next_attempt_at
        WHERE profile_invalidation_outbox.version < EXCLUDED.version
    """
)
# Conditional on the version, so an acknowledgement never drops a newer invalidation.
_ACKNOWLEDGE = text(
    _LOCK_IN_NAME_ORDER
    + """
    DELETE FROM profile_invalidation_outbox o
    USING unnest(CAST(:names AS text[]), CAST(:versions AS bigint[])) AS u(name, version), locked
    WHERE o.artist_name = u.name AND o.version = u.version AND locked.artist_name = o.artist_name
    """
)
_DUE = text(
    """
    SELECT artist_name, version, deleted FROM profile_invalidation_outbox
    WHERE next_attempt_at <= now() ORDER BY next_attempt_at LIMIT :limit
    """
)
_POSTPONE = text(
    _LOCK_IN_NAME_ORDER
    + """
    UPDATE profile_invalidation_outbox o
    SET attempts = o.attempts + 1,
        next_attempt_at = now() + make_interval(
            secs => least(:max_backoff, :base * power(2, least(o.attempts, 30)))
                    * (0.5 + random() / 2))
    FROM unnest(CAST(:names AS text[]), CAST(:versions AS bigint[])) AS u(name, version), locked
    WHERE o.artist_name = u.name AND o.version = u.version AND locked.artist_name = o.artist_name
    """
)


@dataclass(frozen=True)
class Invalidation:
    artist_name: str
    version: int
    deleted: bool = False


async def enqueue(session: AsyncSession, events: Sequence[Invalidation]) -> None:
    """Record the invalidations in the caller's transaction."""
    await session.execute(
        _ENQUEUE,
        {
            "names": [e.artist_name for e in events],
            "versions": [e.version for e in events],
            "deleted": [e.deleted for e in events],
            "delay": _FIRST_RETRY_DELAY_SECONDS,
        },
    )


def _pairs(events: Sequence[Invalidation]) -> dict[str, list[object]]:
    return {"names": [e.artist_name for e in events], "versions": [e.version for e in events]}


class Invalidator:
    """Calls CacheGatewayService/InvalidateProfile; never raises into a save."""

    def __init__(
        self,
        db: Database,
        target: str,
        *,
        timeout: float,
        relay_interval: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.db = db
        self.timeout = timeout
        self.relay_interval = relay_interval
        self.max_backoff = max_backoff
        # No channel retries: the outbox relay retries, and a save must not wait on backoff.
        self._channel = service_channel(target, retries=False)
        self._stub = gateway_grpc.CacheGatewayServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def _send(self, events: Sequence[Invalidation], budget: float) -> list[bool]:
        """Call the gateway for each event within one shared budget; True where acknowledged."""
        deadline = time.monotonic() + budget
        results = [False] * len(events)
        gate = asyncio.Semaphore(_CONCURRENT_CALLS)
        gave_up = False

        async def one(i: int, event: Invalidation) -> None:
            nonlocal gave_up
            async with gate:
                remaining = deadline - time.monotonic()
                if gave_up or remaining <= 0:
                    return
                request = gateway_pb.InvalidateProfileRequest(
                    artist_name=event.artist_name, version=event.version, deleted=event.deleted
                )
                try:
                    await self._stub.InvalidateProfile(request, timeout=remaining)
                    results[i] = True
                except grpc.aio.AioRpcError as error:
                    gave_up = gave_up or error.code() in _GIVE_UP_CODES
                    log.debug("invalidating %s failed: %s", event.artist_name, error.code())

        await asyncio.gather(*(one(i, e) for i, e in enumerate(events)))
        return results

    async def _acknowledge(self, events: Sequence[Invalidation]) -> None:
        async def work(session: AsyncSession) -> None:
            await session.execute(_ACKNOWLEDGE, _pairs(events))

        await self.db.run(work, time_left=5.0)

    async def notify(self, events: Sequence[Invalidation], time_left: float | None) -> bool:
        """After a commit: tell the gateway; True when every event was acknowledged.

        A failure leaves the outbox rows for the relay; it never fails the save.
        """
        budget = self.timeout if time_left is None else min(self.timeout, time_left)
        if not events or budget <= 0:
            return not events
        acked = await self._send(events, budget)
        done = [e for e, ok in zip(events, acked, strict=True) if ok]
        if done:
            try:
                await self._acknowledge(done)
            except Exception as exc:  # the relay will send them again; harmless
                log.warning("could not clear %d outbox rows: %s", len(done), exc)
        if len(done) < len(events):
            log.info(
                "cache gateway did not acknowledge %d of %d invalidations; the relay retries",
                len(events) - len(done),
                len(events),
            )
        return len(done) == len(events)

    async def relay_once(self) -> int:
        """Send the due outbox rows once; returns how many the gateway acknowledged."""

        async def due(session: AsyncSession) -> list[Invalidation]:
            rows = await session.execute(_DUE, {"limit": _RELAY_BATCH})
            return [Invalidation(r.artist_name, r.version, r.deleted) for r in rows]

        events = await self.db.run(due, time_left=5.0)
        if not events:
            return 0
        acked = await self._send(events, max(self.timeout, 0.05) * 4)
        done = [e for e, ok in zip(events, acked, strict=True) if ok]
        failed = [e for e, ok in zip(events, acked, strict=True) if not ok]

        async def record(session: AsyncSession) -> None:
            if done:
                await session.execute(_ACKNOWLEDGE, _pairs(done))
            if failed:
                params = {
                    **_pairs(failed),
                    "base": self.relay_interval,
                    "max_backoff": self.max_backoff,
                }
                await session.execute(_POSTPONE, params)

        await self.db.run(record, time_left=5.0)
        return len(done)

    async def relay_forever(self) -> None:
        """The background job of the profile_store process."""
        while True:
            try:
                await self.relay_once()
            except Exception as exc:  # a database outage must not end the relay
                log.warning("invalidation relay round failed: %s", exc)
            await asyncio.sleep(self.relay_interval)
