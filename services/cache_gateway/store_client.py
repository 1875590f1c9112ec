"""Calls to the profile store, with its failures turned into domain errors."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.errors import ArtistNotFound, NotFound, Unavailable
from shared.grpc.channels import service_channel
from shared.grpc.status import error_info
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc

SERVICE_NAME = store_pb.DESCRIPTOR.services_by_name["ProfileStoreService"].full_name


class StoreUnreachable(Unavailable):
    """The store did not answer (down, overloaded or too slow)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class StoreClient:
    def __init__(self, target: str, *, timeout: float) -> None:
        self.channel = service_channel(target)
        self.stub = store_grpc.ProfileStoreServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close(None)

    async def get_profile(self, name: str) -> common_pb2.StyleProfile:
        """The stored profile; NotFound as the store said it; StoreUnreachable otherwise."""
        request = store_pb.GetStyleProfileRequest(artist_name=name)
        try:
            reply = await self.stub.GetStyleProfile(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(name, exc) from None
        return reply.profile

    async def serving(self) -> bool:
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        try:
            reply = await self.health.Check(request, timeout=min(self.timeout, 1.0))
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _translate(name: str, exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        info = error_info(exc)
        if info is None or info.reason == ArtistNotFound.reason:
            return ArtistNotFound(name)
        metadata = dict(info.metadata)
        return NotFound(exc.details() or "not found", reason=info.reason, metadata=metadata)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return StoreUnreachable("the profile store did not answer in time", "store_timeout")
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreUnreachable("the profile store is unavailable", "store_unavailable")
    return StoreUnreachable(f"the profile store answered {code.name}", "store_error")
