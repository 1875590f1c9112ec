"""One RPC of a client: the generated multi-callable with its default deadline and the
per-call request id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from stylebase_client.config import REQUEST_ID_KEY, Kind

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Metadata = Sequence[tuple[str, str | bytes]]
MetadataTuple = tuple[tuple[str, str | bytes], ...]


def call_metadata(request_id: str | None, metadata: Metadata) -> MetadataTuple:
    """The call's metadata with x-request-id, which the services log and echo in trailers;
    without one, the service makes its own."""
    extra = ((REQUEST_ID_KEY, request_id),) if request_id else ()
    return (*metadata, *extra)


class Call(Generic[Req, Resp]):
    """A blocking unary RPC; `timeout` in seconds, None for the method's default."""

    def __init__(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], kind: Kind) -> None:
        self._method = method
        self.default_timeout = kind.timeout

    def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: Metadata = (),
    ) -> Resp:
        return self.with_call(request, timeout=timeout, request_id=request_id, metadata=metadata)[0]

    def with_call(
        self,
        request: Req,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: Metadata = (),
    ) -> tuple[Resp, grpc.Call]:
        """The response and the call, whose trailing metadata has the x-request-id."""
        return self._method.with_call(
            request,
            timeout=self.default_timeout if timeout is None else timeout,
            metadata=call_metadata(request_id, metadata),
        )


class AsyncCall(Generic[Req, Resp]):
    """A unary RPC for asyncio; `timeout` in seconds, None for the method's default."""

    def __init__(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], kind: Kind) -> None:
        self._method = method
        self.default_timeout = kind.timeout

    async def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the call's gRPC deadline)
        request_id: str | None = None,
        metadata: Metadata = (),
    ) -> Resp:
        return await self.start(request, timeout=timeout, request_id=request_id, metadata=metadata)

    def start(
        self,
        request: Req,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: Metadata = (),
    ) -> grpc.aio.UnaryUnaryCall[Req, Resp]:
        """The call itself: await it for the response; its trailing_metadata() has the
        x-request-id."""
        return self._method(
            request,
            timeout=self.default_timeout if timeout is None else timeout,
            metadata=call_metadata(request_id, metadata),
        )
