"""Invalidating cached copies after committed saves and deletes: an outbox row, Redis, a relay.

The outbox row is written in the save's own transaction, so an invalidation is never
lost: after the commit the save runs it against Redis (the authority every gateway listens
to) once, and a background relay retries whatever was not confirmed, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.cache.authority import Authority
from shared.cache.protocol import Drop
from shared.db.engine import Database
from shared.metrics import OUTBOX_PENDING

log = logging.getLogger(__name__)

# The relay leaves a fresh row alone this long, so it does not race the RPC's own call.
_FIRST_RETRY_DELAY_SECONDS = 2.0
_RELAY_BATCH = 500

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
# Once the store hears Redis again, whatever waited out the outage is due at once: the relay's
# backoff was for Redis being away, and must not keep gateways on old copies after it is back.
_DUE_NOW = text(
    """
    UPDATE profile_invalidation_outbox SET next_attempt_at = now(), attempts = 0
    WHERE next_attempt_at > now()
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
_PENDING = "SELECT count(*) AS pending FROM profile_invalidation_outbox"


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
    """Runs invalidations against Redis; never raises into a save.

    authority None (no REDIS_URL): there is nothing to invalidate; the gateways, without
    Redis too, keep in-process copies for their short degraded TTL only.
    """

    def __init__(
        self,
        db: Database,
        authority: Authority | None,
        *,
        timeout: float,
        relay_interval: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.db = db
        self.authority = authority
        self.timeout = timeout
        self.relay_interval = relay_interval
        self.max_backoff = max_backoff

    async def close(self) -> None:
        if self.authority is not None:
            await self.authority.close()

    async def _send(self, events: Sequence[Invalidation], budget: float) -> bool:
        if self.authority is None:
            return False
        drops = [Drop(e.artist_name, e.version, e.deleted) for e in events]
        return await self.authority.invalidate(drops, budget)

    async def _acknowledge(self, events: Sequence[Invalidation]) -> None:
        async def work(session: AsyncSession) -> None:
            await session.execute(_ACKNOWLEDGE, _pairs(events))

        await self.db.run(work, time_left=5.0)

    async def notify(self, events: Sequence[Invalidation], time_left: float | None) -> bool:
        """After a commit: True when every gateway connected to Redis has dropped older copies.

        A failure leaves the outbox rows for the relay; it never fails the save.
        """
        budget = self.timeout if time_left is None else min(self.timeout, time_left)
        if not events or budget <= 0:
            return not events
        done = await self._send(events, budget)
        if done or self.authority is None:
            try:
                await self._acknowledge(events)
            except Exception as exc:  # the relay will run them again; harmless
                log.warning("could not clear %d outbox rows: %s", len(events), exc)
        else:
            log.info("%d invalidations not confirmed; the relay retries", len(events))
        return done

    async def relay_once(self) -> int:
        """Run the due outbox rows once; returns how many were confirmed."""

        async def due(session: AsyncSession) -> list[Invalidation]:
            rows = await session.execute(_DUE, {"limit": _RELAY_BATCH})
            return [Invalidation(r.artist_name, r.version, r.deleted) for r in rows]

        events = await self.db.run(due, time_left=5.0)
        if not events:
            return 0
        # Without Redis the rows say nothing anyone could act on: they are cleared.
        done = await self._send(events, max(self.timeout, 0.05) * 4) or self.authority is None

        async def record(session: AsyncSession) -> None:
            if done:
                await session.execute(_ACKNOWLEDGE, _pairs(events))
            else:
                params = {
                    **_pairs(events),
                    "base": self.relay_interval,
                    "max_backoff": self.max_backoff,
                }
                await session.execute(_POSTPONE, params)

        await self.db.run(record, time_left=5.0)
        return len(events) if done else 0

    async def count_pending(self) -> int:
        """Publish profile_invalidation_outbox_pending: rows not yet confirmed, due or not."""
        rows = await self.db.fetch(_PENDING, time_left=5.0)
        pending = int(rows[0]["pending"])
        OUTBOX_PENDING.set(pending)
        return pending

    async def _all_due_now(self) -> None:
        async def work(session: AsyncSession) -> int:
            return int((await session.execute(_DUE_NOW)).rowcount)  # type: ignore[attr-defined]

        hastened = await self.db.run(work, time_left=5.0)
        if hastened:
            log.info("Redis reachable again: %d held invalidations due now", hastened)

    async def relay_forever(self) -> None:
        """A background job of the profile_store process (the other: the authority's run)."""
        heard = True
        while True:
            try:
                listening = self.authority is not None and self.authority.listening
                if listening and not heard:
                    await self._all_due_now()
                heard = listening or self.authority is None
                await self.relay_once()
                await self.count_pending()
            except Exception as exc:  # a database outage must not end the relay
                log.warning("invalidation relay round failed: %s", exc)
            await asyncio.sleep(self.relay_interval)
