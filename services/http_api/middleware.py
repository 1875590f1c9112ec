"""Per request, before any route: its request id, its deadline, its size limit, its metrics.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which costs a task and
a memory stream per request on the hot path.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.http_api.deadline import HEADER as TIMEOUT_HEADER
from services.http_api.deadline import deadline_var, parse_timeout
from services.http_api.errors import ApiError, error_response, internal
from shared.logging import ACCESS_LOGGER, new_request_id, request_id_var
from shared.metrics import SeriesGroup

# The HTTP API's own series, served by its /metrics (with the process's), nothing else.
HTTP = SeriesGroup("http")
HTTP_REQUESTS = HTTP.add(
    Counter("http_requests", "HTTP requests answered", ["method", "route", "status"], registry=None)
)
HTTP_DURATION = HTTP.add(
    Histogram(
        "http_request_duration_seconds",
        "Time to answer an HTTP request",
        ["method", "route"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=None,
    )
)
log = logging.getLogger(__name__)
# In place of uvicorn's access log (off): ours has the route, the duration and the request id.
access = logging.getLogger(ACCESS_LOGGER)


def _request_id(value: str) -> str:
    # The gRPC side accepts 1..128 characters; anything else (or nothing) gets a fresh id.
    if 0 < len(value) <= 128 and value.isprintable() and value.isascii():
        return value
    return new_request_id()


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        *,
        default_timeout: float,
        max_timeout: float,
        max_body_bytes: int,
        retry_after: int,
        traced: bool,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        # Without a tracer provider no span records; a traceparent still passes on.
        self.traced = traced
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _request_id(headers.get("x-request-id", ""))
        status = [500]
        started_response = [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                started_response[0] = True
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        id_token = request_id_var.set(request_id)
        try:
            try:
                timeout = self._timeout(headers)
                self._check_size(headers)
            except ApiError as error:
                await error_response(error, self.retry_after)(scope, receive, send_with_id)
                return
            deadline_token = deadline_var.set(time.monotonic() + timeout)
            try:
                await self._traced(scope, headers, self._bounded(receive), send_with_id)
            except Exception:
                # A bug: logged with its traceback under the request id, never sent.
                log.exception("%s %s failed unexpectedly", scope["method"], scope["path"])
                if started_response[0]:
                    raise
                await error_response(internal(), self.retry_after)(scope, receive, send_with_id)
            finally:
                deadline_var.reset(deadline_token)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            if self.access_log:
                _log_access(scope, route, status[0], elapsed)
            request_id_var.reset(id_token)
            counter, histogram = _series(scope["method"], route, status[0])
            counter.inc()
            histogram.observe(elapsed)

    async def _traced(
        self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        # With tracing on, FastAPI's own instrumentation makes the SERVER span (joined to the
        # caller's traceparent, named by route) and the channels' interceptors its children.
        # Off, the caller's trace context is still made current, so the calls pass it on.
        if self.traced or "traceparent" not in headers:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(propagate.extract(headers))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)

    def _timeout(self, headers: dict[str, str]) -> float:
        value = headers.get(TIMEOUT_HEADER)
        if value is None:
            return self.default_timeout
        return parse_timeout(value, self.max_timeout)

    def _bounded(self, receive: Receive) -> Receive:
        """The body as it arrives, refused once past the limit: a chunked body has no
        Content-Length to check up front."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _too_large(f"more than {self.max_body_bytes} bytes", self.max_body_bytes)
            return message

        return bounded

    def _check_size(self, headers: dict[str, str]) -> None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise _too_large(f"{int(length)} bytes", self.max_body_bytes)


def _log_access(scope: Scope, route: str, status: int, elapsed: float) -> None:
    duration_ms = round(elapsed * 1000, 3)
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else ""
    method, path = scope["method"], scope["path"]
    access.info(
        "%s %s %s %.3f ms %s",
        method,
        path,
        status,
        duration_ms,
        peer,
        extra={
            "http_method": method,
            "http_path": path,
            "http_route": route,
            "http_status": status,
            "duration_ms": duration_ms,
            "peer": peer,
        },
    )


def _too_large(size: str, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is {size}; at most {limit} are accepted")


@functools.cache
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    # Bound once per (method, route, status): labels() costs about as much as the update.
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(method, route)


def _route_of(scope: Scope) -> str:
    # The route's template, not the path: one series per endpoint, whatever the names.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
