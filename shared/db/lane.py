"""The connections Database.fetch keeps between calls, so its hot path skips the pool.

Checking a connection out of SQLAlchemy's pool and back in costs about 100 µs of CPU here (two
greenlet switches and the pool's events), as much as the statement's own driver work. The lane
keeps up to `capacity` connections checked out and idle between fetches; a fetch takes the
most recently used one (its backend's caches are warm) and puts it back. Past capacity, or when
the lane is empty, connections come from and go to the pool as usual, so sessions never wait on
connections the lane holds idle beyond that. Idle ones get the pool's own checks: a closed one
is dropped at once, one idle for ping_idle_seconds or more must answer a ping first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from shared.db.pool import close_backend


class FetchLane:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        capacity: int,
        ping_idle_seconds: float | None,
        close_timeout: float,
    ):
        self._engine = engine
        self._capacity = capacity
        self._ping_idle = ping_idle_seconds
        self._close_timeout = close_timeout
        self._idle: list[tuple[Any, float]] = []  # (pool's connection proxy, idle since)
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def borrow(self) -> Any:
        """A pooled connection proxy (raises what the pool raises when it cannot give one)."""
        while self._idle:
            fairy, since = self._idle.pop()
            raw = fairy.driver_connection
            if raw.is_closed():
                fairy.invalidate()
                continue
            if self._ping_idle is not None and time.monotonic() - since >= self._ping_idle:
                try:
                    await raw.execute(";", timeout=5)
                except BaseException as exc:
                    # A cancelled caller too: the fairy is out of the lane and must not leak.
                    self.discard(fairy)
                    if not isinstance(exc, Exception):
                        raise
                    continue
            return fairy
        return await greenlet_spawn(self._engine.sync_engine.raw_connection)

    async def give_back(self, fairy: Any) -> None:
        """After a statement that completed, successfully or with a database error."""
        if not self._closed and len(self._idle) < self._capacity:
            self._idle.append((fairy, time.monotonic()))
        else:
            await greenlet_spawn(fairy.close)

    def discard(self, fairy: Any) -> None:
        """After a timeout, a cancellation or a broken connection: its state is unknown, so it
        is closed. The pool counts it checked out until its backend is gone (see
        shared.db.pool), in a task of its own so a cancelled caller need not wait."""
        task = asyncio.get_running_loop().create_task(self._retire(fairy))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, fairy: Any) -> None:
        try:
            await close_backend(fairy.driver_connection, within=self._close_timeout)
        finally:
            fairy.invalidate()

    async def close(self) -> None:
        """Return every idle connection to the pool, before the engine is disposed."""
        self._closed = True
        while self._idle:
            fairy, _ = self._idle.pop()
            await greenlet_spawn(fairy.close)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
