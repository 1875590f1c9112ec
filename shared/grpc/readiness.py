"""Readiness: health that follows the dependencies, and a gate for calls that cannot work yet."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from shared.errors import DeadlineExceeded, FailedPrecondition, StylebaseError, Unavailable
from shared.grpc.base import UnaryHandler, UnaryServerInterceptor

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# While serving, how soon a probe sees an outage; while not, how soon it sees the recovery.
READY_INTERVAL_SECONDS = 1.0
NOT_READY_INTERVAL_SECONDS = 0.5
CHECK_TIMEOUT_SECONDS = 5.0


class ReadinessGate(UnaryServerInterceptor):
    """Refuses the service's own calls while readiness fails for a reason the calls would
    otherwise report as INTERNAL: a schema the code does not fit, or an unexpected failure.

    An unreachable or slow database is left to the calls themselves: they answer UNAVAILABLE
    or DEADLINE_EXCEEDED on their own, and use a database that is back at once rather than
    a check later. Health, reflection and admin calls always pass.
    """

    def __init__(self, name: str, full_names: Sequence[str]) -> None:
        self._name = name
        self._prefixes = tuple(f"/{full_name}/" for full_name in full_names)
        # A fresh error each call: raising one instance again would grow its traceback.
        self._refusal: Callable[[], StylebaseError] | None = None

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        if not method.startswith(self._prefixes):
            return inner

        async def gated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            refusal = self._refusal
            if refusal is not None:
                raise refusal()
            return await inner(request, context)

        return gated

    def update(self, failure: BaseException | None) -> None:
        if failure is None or isinstance(failure, Unavailable | DeadlineExceeded | TimeoutError):
            self._refusal = None
        elif isinstance(failure, FailedPrecondition):
            self._refusal = functools.partial(
                FailedPrecondition, failure.message, reason=failure.reason
            )
        else:
            self._refusal = functools.partial(
                Unavailable, f"{self._name} is not ready ({failure}); retry later"
            )


class Readiness:
    """Runs the service's readiness check and reports it to health and to the gate."""

    def __init__(
        self,
        name: str,
        check: Callable[[], Awaitable[None]] | None,
        health: HealthServicer,
        health_names: Sequence[str],
        gate: ReadinessGate | None,
    ) -> None:
        self.name = name
        self.check = check
        self.health = health
        self.health_names = list(health_names)
        self.gate = gate
        self.ready = False
        # What was last logged, so an outage is logged once, not every half second.
        self._logged: str | None = None

    async def update(self) -> None:
        failure: BaseException | None = None
        if self.check is not None:
            try:
                await asyncio.wait_for(self.check(), timeout=CHECK_TIMEOUT_SECONDS)
            except Exception as exc:  # any failure of the check means not ready
                failure = exc
        if self.gate is not None:
            self.gate.update(failure)
        self.ready = failure is None
        for health_name in self.health_names:
            await self.health.set(health_name, SERVING if self.ready else NOT_SERVING)
        message = "" if failure is None else str(failure) or type(failure).__name__
        if message != self._logged:
            if failure is None:
                log.info("%s ready", self.name)
            else:
                log.warning("%s not ready: %s", self.name, message)
            self._logged = message

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(
                READY_INTERVAL_SECONDS if self.ready else NOT_READY_INTERVAL_SECONDS
            )
            await self.update()
