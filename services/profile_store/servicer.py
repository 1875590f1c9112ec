"""gRPC servicer of ProfileStoreService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc


class ProfileStoreServicer(pb_grpc.ProfileStoreServiceServicer):
    """RPCs not defined here answer UNIMPLEMENTED; shared.pending lists them."""
