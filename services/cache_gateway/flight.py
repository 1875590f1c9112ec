"""Single-flight: concurrent misses for one key share one lookup."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[T]] = {}
        self.merges = 0

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.merges += 1
        # Shielded: a caller that gives up (deadline, cancel) does not cancel the others.
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            # Marks the exception retrieved even when every caller has gone.
            task.exception()
