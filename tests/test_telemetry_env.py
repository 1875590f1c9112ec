"""Empty OTEL_* variables (as compose files and ConfigMaps set them) count as unset: spans
still reach a real OTLP/gRPC receiver at the exporter's default endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from shared.embedded.ports import port_in_use
from tests.harness import ROOT


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.arrived = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()


# Where the OTLP exporter sends when no endpoint is configured (localhost:4317).
DEFAULT_OTLP_PORT = 4317


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = DEFAULT_OTLP_PORT
    if port_in_use(port):
        pytest.skip(f"port {port} is taken; the default OTLP endpoint cannot be stood in for")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield servicer
    server.stop(None)


SPAN_SCRIPT = """
from shared.settings import ObservabilitySettings
from shared.telemetry import configure_tracing
provider = configure_tracing("profile_store", ObservabilitySettings())
with provider.get_tracer("test").start_as_current_span("empty-vars-span"):
    pass
provider.shutdown()
"""


def test_empty_otel_variables_do_not_break_otlp_export(receiver: Receiver) -> None:
    servicer = receiver
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "otlp",
        # Set to nothing, as the compose file and the ConfigMap set them: the exporter must
        # fall back to its default endpoint, where the receiver listens.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        "OTEL_SERVICE_NAME": "",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    # Its own process: a tracer provider is installed once per process, for good.
    result = subprocess.run(
        [sys.executable, "-c", SPAN_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert servicer.arrived.wait(10), result.stderr[-2000:]
    assert "empty-vars-span" in servicer.names
