"""What every Stylebase interceptor shares: wrapping unary handlers, adding call metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

UnaryHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class UnaryServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the unary-unary handlers of a server; streaming ones (health Watch,
    reflection) pass through untouched.

    grpc hands back the same handler object for a method on every call, so the
    wrapped handler is built once per method, not once per call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        """The behaviour around one method's handler; method is '/package.Service/Method'."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def with_metadata(
    details: grpc.aio.ClientCallDetails, pairs: Iterable[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    """The same call with extra metadata (later values replace earlier ones of a key)."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in pairs:
        metadata[key] = value
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
