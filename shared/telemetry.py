"""Tracing and gRPC metrics: exporters from OTEL_* settings, propagation in metadata, SQL spans,
and the background marker that both tracing and the database series read."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.grpc.base import UnaryHandler, UnaryServerInterceptor, with_metadata
from shared.metrics import GRPC_SERVER_HANDLED, GRPC_SERVER_HANDLING, count_every_code
from shared.settings import ObservabilitySettings

log = logging.getLogger(__name__)

# A proxy: it follows whichever provider configure_tracing sets, and is a no-op without one
# (context still propagates, so a traced caller's trace id reaches the logs).
tracer = trace.get_tracer("stylebase")
# Whether configure_tracing installed a provider: without one no span records anything, so
# the hot paths skip building them (the SDK's own check reads os.environ on every call).
_tracing = False

REQUEST = "request"
BACKGROUND = "background"
# True in work a service starts by itself (readiness polling, relays, canaries, pruning,
# health checks of its dependencies), not for an RPC: such work is labelled origin=background
# in the database series and makes no spans. Tasks inherit it from where they are created.
_background: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "stylebase_background", default=False
)
# Codes that say the server failed; the others (NOT_FOUND, INVALID_ARGUMENT, ...) are answers
# about the request, not errors of the span (OpenTelemetry's gRPC conventions).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_HEALTH_SERVICE = "grpc.health.v1.Health"


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Mark what runs inside (and every task created inside) as background work."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


def background_context() -> contextvars.Context:
    """A fresh context marked as background, for asyncio.create_task(..., context=...)."""
    context = contextvars.Context()
    context.run(_background.set, True)
    return context


def origin() -> str:
    """The origin label of the work running now: "background" or "request"."""
    return BACKGROUND if _background.get() else REQUEST


def _set_grpc_status(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))


class OtlpJsonFileExporter(SpanExporter):
    """Appends finished spans to a file (OTEL_TRACES_EXPORTER=file), one OTLP
    ExportTraceServiceRequest in its protobuf JSON form a line, as collectors and other OTLP
    tools read it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json_format.MessageToJson(encode_spans(spans), indent=None) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def forget_empty_otel_variables() -> None:
    """Drop OTEL_* variables set to nothing: compose files and ConfigMaps list every variable,
    and the SDK reads an empty OTEL_EXPORTER_OTLP_ENDPOINT as the endpoint '' (no export at
    all: "the target uri is not valid") instead of as unset."""
    for name in [k for k, v in os.environ.items() if k.startswith("OTEL_") and not v.strip()]:
        del os.environ[name]


def configure_tracing(service: str, settings: ObservabilitySettings) -> TracerProvider | None:
    """Install the process's tracer provider; None (no spans recorded) when no exporter is set."""
    exporters = settings.trace_exporters()
    if not exporters:
        return None
    forget_empty_otel_variables()
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name or service})
    )
    for name in exporters:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            # Imported here: the OTLP stack is heavy and most processes do not export.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = settings.otel_exporter_otlp_endpoint or None
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        elif name == "file":
            # Written at once, so a reader sees every span of a finished RPC.
            exporter = OtlpJsonFileExporter(settings.stylebase_traces_file)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _tracing
    _tracing = True
    log.info("tracing to %s", ", ".join(exporters))
    return provider


def _status_of(context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode) -> Any:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


class TelemetryInterceptor(UnaryServerInterceptor):
    """Outermost server interceptor: a SERVER span joined to the caller's trace, and the
    gRPC request counter and latency histogram with the status code the client saw.

    The counter starts at 0 for every status code of the service's own methods (full_names),
    so rate() and absent() work before the first call; a health probe with no caller's trace
    starts no span (probes would otherwise be most of the traces).
    """

    def __init__(self, full_names: Collection[str] = ()) -> None:
        self._own = frozenset(full_names)

    def wrap(self, inner: UnaryHandler, full_method: str) -> UnaryHandler:
        service, _, method = full_method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        probe = service == _HEALTH_SERVICE
        # Children bound once per method: a labels() lookup costs about as much as the
        # observation itself.
        handling = GRPC_SERVER_HANDLING.labels(service, method)
        handled: dict[grpc.StatusCode, Any] = (
            count_every_code(service, method) if service in self._own else {}
        )

        def finish(code: grpc.StatusCode, started: float) -> None:
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = GRPC_SERVER_HANDLED.labels(service, method, code.name)
            counter.inc()
            handling.observe(time.perf_counter() - started)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()
            # No provider and no caller's trace: a span would record nothing and put nothing
            # in the logs, so the call runs without one.
            scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if not _untraced(metadata, probe):
                carrier = {key: value for key, value in metadata if isinstance(value, str)}
                scope = tracer.start_as_current_span(
                    f"{service}/{method}",
                    context=propagate.extract(carrier),
                    kind=SpanKind.SERVER,
                    attributes=attributes,
                    # The status comes from the code alone: an abort with NOT_FOUND raises
                    # through here, and is no error of the server.
                    record_exception=False,
                    set_status_on_exception=False,
                )
            with scope as span:
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await inner(request, context)
                    code = _status_of(context, grpc.StatusCode.OK)
                    return response
                except grpc.aio.AbortError:
                    code = _status_of(context, grpc.StatusCode.UNKNOWN)
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    finish(code, started)
                    if span is not None:
                        _set_grpc_status(span, code)

        return wrapper


def _untraced(metadata: Any, probe: bool) -> bool:
    if _tracing and not probe:
        return False
    return not any(key == "traceparent" for key, _ in metadata)


class TracingClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """A CLIENT span per call, its context sent in the metadata (W3C traceparent); none for
    background work, which the callee then does not trace either."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if _background.get():
            return await continuation(client_call_details, request)
        raw = client_call_details.method
        name = (raw.decode() if isinstance(raw, bytes) else str(raw)).lstrip("/")
        service, _, method = name.partition("/")
        with tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            call = await continuation(with_metadata(client_call_details, carrier.items()), request)
            # Waiting for the status here keeps the span as long as the call.
            code = await call.code()
            _set_grpc_status(span, code)
            return call


def start_sql_span(operation: str, table: str, statement: str) -> trace.Span:
    """A CLIENT span for one statement, child of whatever span is current (the RPC's); the
    invalid span at once when nothing would record it, or in background work."""
    if not _tracing or _background.get():
        return trace.INVALID_SPAN
    return tracer.start_span(
        f"{operation.upper()} {table}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": "postgresql",
            "db.operation": operation,
            "db.sql.table": table,
            "db.statement": statement[:2000],
        },
    )


def end_sql_span(span: trace.Span, error: BaseException | None = None) -> None:
    if span is trace.INVALID_SPAN:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
