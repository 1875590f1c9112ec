"""Reading the file exporter's output: OTLP ExportTraceServiceRequest JSON, one a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def requests(path: Path) -> list[ExportTraceServiceRequest]:
    """Each line parsed as the OTLP message (json_format.Parse fails on anything else)."""
    if not path.exists():
        return []
    return [
        json_format.Parse(line, ExportTraceServiceRequest())
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans of the file as flat records: name, service, kind (SERVER, CLIENT, ...),
    hex trace_id, span_id and parent_span_id (None for a root), status (OK, ERROR, UNSET),
    attributes."""
    records = []
    for request in requests(path):
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    records.append(
                        {
                            "name": span.name,
                            "service": resource.get("service.name"),
                            "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "status": Status.StatusCode.Name(span.status.code).removeprefix(
                                "STATUS_CODE_"
                            ),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
    return records
