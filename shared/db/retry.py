"""Retries of a unit of work: only what cannot apply twice, and never past the caller's deadline.

A write is retried only when nothing of it reached the server (NotSent): a connection lost
after a statement was sent, COMMIT included, may have committed, and running the work again
could write it twice. Work the caller declares idempotent (reads) is retried after any
connection loss too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from shared.db.errors import NotSent, is_connection_error
from shared.errors import DeadlineExceeded, Unavailable

T = TypeVar("T")
_FIRST_RETRY_WAIT = 0.05
ATTEMPTS = 3


def check_deadline(time_left: float | None) -> None:
    if time_left is not None and time_left <= 0:
        raise DeadlineExceeded("the deadline expired before the database was reached")


def retryable(exc: BaseException, *, idempotent: bool) -> bool:
    if isinstance(exc, NotSent):
        return True
    cause = exc.__cause__
    return (
        idempotent
        and isinstance(exc, Unavailable)
        and cause is not None
        and is_connection_error(cause)
    )


async def with_retries(
    attempt: Callable[[float | None], Awaitable[T]],
    *,
    time_left: float | None,
    idempotent: bool,
) -> T:
    """attempt(time_left) at most ATTEMPTS times; each gets what is left of the deadline."""
    deadline = None if time_left is None else time.monotonic() + time_left

    def remaining() -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        check_deadline(left)
        return left

    # The first attempt runs bare: the retry loop costs ~30 us a call, and it is rarely needed.
    try:
        return await attempt(time_left)
    except Unavailable as exc:
        if not retryable(exc, idempotent=idempotent):
            raise
    await asyncio.sleep(_FIRST_RETRY_WAIT * random.random())
    async for state in AsyncRetrying(
        stop=stop_after_attempt(ATTEMPTS - 1),
        wait=wait_exponential_jitter(multiplier=0.05, max=0.5),
        retry=retry_if_exception(lambda e: retryable(e, idempotent=idempotent)),
        reraise=True,
    ):
        with state:
            return await attempt(remaining())
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
