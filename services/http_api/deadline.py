"""The request's deadline (X-Request-Timeout or the default), shared by its gRPC calls."""

from __future__ import annotations

import contextvars
import math
import re
import time

from services.http_api.errors import ApiError

HEADER = "x-request-timeout"
# "2.5" (seconds), "2.5s" or "250ms".
_TIMEOUT = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?)\s*(ms|s)?\s*$")

deadline_var: contextvars.ContextVar[float] = contextvars.ContextVar("deadline", default=math.inf)


def parse_timeout(value: str, maximum: float) -> float:
    """Seconds from an X-Request-Timeout value; ApiError naming the header otherwise."""
    match = _TIMEOUT.match(value)
    if match is None:
        raise ApiError.invalid("X-Request-Timeout", "must be a duration like 2.5, 2.5s or 250ms")
    seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if not 0 < seconds <= maximum:
        raise ApiError.invalid(
            "X-Request-Timeout", f"must be more than 0 and at most {maximum:g} seconds"
        )
    return seconds


def remaining() -> float:
    """Seconds left for the next gRPC call; 504 when none are."""
    left = deadline_var.get() - time.monotonic()
    if left <= 0:
        raise ApiError(504, "deadline_exceeded", "the request's deadline passed")
    return left
