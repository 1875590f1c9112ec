"""The channel of a client, sync or asyncio, with its health check and closing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import grpc
from grpc_health.v1 import health_pb2

from stylebase_client.calls import AsyncCall, Call
from stylebase_client.config import HEALTH_SERVICE, Kind, Tls, channel_options

_CHECK = f"/{HEALTH_SERVICE}/Check"


class Spec:
    # The service's full proto name and each RPC's kind (retries and default deadline).
    SERVICE: ClassVar[str]
    METHODS: ClassVar[Mapping[str, Kind]]


class SyncClient(Spec):
    """A blocking client; `target` is host:port or dns:///host:port (every address it
    resolves to is used, round robin). Close it, or use it as a context manager."""

    def __init__(
        self, target: str, *, tls: Tls | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        opts = channel_options(self.SERVICE, self.METHODS, tls, options)
        self.channel = (
            grpc.secure_channel(target, tls.credentials(), opts)
            if tls is not None
            else grpc.insecure_channel(target, opts)
        )
        check: grpc.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self.channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._check = Call(check, Kind.READ)

    def check_health(
        self, service: str | None = None, *, timeout: float | None = None
    ) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        """The serving status of `service` (default: this client's; "" for the server)."""
        name = self.SERVICE if service is None else service
        request = health_pb2.HealthCheckRequest(service=name)
        return self._check(request, timeout=timeout).status

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(Spec):
    """An asyncio client, made and used inside a running event loop; `target` as for
    SyncClient. Close it (await), or use it as an async context manager."""

    def __init__(
        self, target: str, *, tls: Tls | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        opts = channel_options(self.SERVICE, self.METHODS, tls, options)
        self.channel = (
            grpc.aio.secure_channel(target, tls.credentials(), opts)
            if tls is not None
            else grpc.aio.insecure_channel(target, opts)
        )
        check: grpc.aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = self.channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._check = AsyncCall(check, Kind.READ)

    async def check_health(
        self,
        service: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the call's gRPC deadline)
    ) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        """The serving status of `service` (default: this client's; "" for the server)."""
        name = self.SERVICE if service is None else service
        request = health_pb2.HealthCheckRequest(service=name)
        return (await self._check(request, timeout=timeout)).status

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
