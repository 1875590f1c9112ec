"""gRPC servicer of CacheGatewayService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as pb_grpc


class CacheGatewayServicer(pb_grpc.CacheGatewayServiceServicer):
    """RPCs not defined here answer UNIMPLEMENTED; shared.pending lists them."""
