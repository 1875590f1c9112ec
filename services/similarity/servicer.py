"""gRPC servicer of SimilarityService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc


class SimilarityServicer(pb_grpc.SimilarityServiceServicer):
    """RPCs not defined here answer UNIMPLEMENTED; shared.pending lists them."""
