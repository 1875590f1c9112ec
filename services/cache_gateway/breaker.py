"""A circuit breaker: after a failure, stop trying a dependency for a growing backoff."""

from __future__ import annotations


class Breaker:
    def __init__(self, backoff: float, *, max_factor: float = 8.0) -> None:
        self.base = backoff
        self.limit = backoff * max_factor
        self.backoff = backoff
        self.closed = False
        self.open_until = 0.0
        self.trips = 0

    def trip(self, now: float) -> None:
        """Open (or keep open) the breaker; each failed probe doubles the wait."""
        if self.closed:
            self.backoff = self.base
        else:
            self.backoff = min(self.backoff * 2, self.limit)
        self.closed = False
        self.open_until = now + self.backoff
        self.trips += 1

    def wait(self, now: float) -> float:
        """Seconds until the next probe is allowed."""
        return 0.0 if self.closed else max(0.0, self.open_until - now)

    def close(self) -> None:
        self.closed = True
        self.backoff = self.base
