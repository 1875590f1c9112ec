"""gRPC servicer of AnalyticsService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from stylebase.analytics.v1 import analytics_service_pb2_grpc as pb_grpc


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """RPCs not defined here answer UNIMPLEMENTED; shared.pending lists them."""
