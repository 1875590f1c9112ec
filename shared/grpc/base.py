"""What every Stylebase interceptor shares: wrapping unary handlers once, at registration
(request bytes that do not decode refused there as INVALID_ARGUMENT), and adding call
metadata on the client side."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

UnaryHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
# Generic only in the type stubs.
if TYPE_CHECKING:
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    GenericHandler: TypeAlias = grpc.GenericRpcHandler[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler


class UnaryServerInterceptor:
    """Behaviour around the unary-unary handlers of a server; streaming ones (health Watch,
    reflection) pass through untouched.

    Not a grpc.aio.ServerInterceptor: those run a chain of coroutines on every call to find
    the handler, about a tenth of a cache hit's CPU here. A Registrar applies wrap() once per
    method when the server's handlers are added, and the calls run the wrapped handler.
    """

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        """The behaviour around one method's handler; method is '/package.Service/Method'."""
        raise NotImplementedError


class _Undecodable:
    """Stands for request bytes the method's deserializer refused."""


UNDECODABLE = _Undecodable()
UNDECODABLE_RULE = "must be a serialized request message of this method"
# At most one warning per this many seconds and method: garbage costs a client nothing to send.
UNDECODABLE_WARN_SECONDS = 60.0


class _TolerantDeserializer:
    """The method's deserializer, answering UNDECODABLE instead of raising.

    grpcio logs a deserializer's exception with a full traceback at ERROR for every such
    request and answers UNKNOWN; here the handler answers INVALID_ARGUMENT instead, and
    the log gets a one-line warning at most once a minute per method, with a count.
    """

    def __init__(self, inner: Callable[[bytes], Any], method: str) -> None:
        self.inner = inner
        self.method = method
        self.refused = 0
        self.warned_at: float | None = None

    def __call__(self, raw: bytes) -> Any:
        try:
            return self.inner(raw)
        except Exception as error:  # DecodeError, or whatever a custom deserializer raises
            self.refused += 1
            now = time.monotonic()
            if self.warned_at is None or now - self.warned_at >= UNDECODABLE_WARN_SECONDS:
                log.warning(
                    "%s: undecodable request of %s bytes refused (%s; %s so far)",
                    self.method,
                    len(raw),
                    type(error).__name__,
                    self.refused,
                )
                self.warned_at = now
            return UNDECODABLE


def _refusing_undecodable(inner: UnaryHandler) -> UnaryHandler:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is UNDECODABLE:
            raise InvalidArgument("request", UNDECODABLE_RULE)
        return await inner(request, context)

    return handler


def _wrapped(
    handler: MethodHandler, method: str, interceptors: Sequence[UnaryServerInterceptor]
) -> MethodHandler:
    if handler.unary_unary is None:
        return handler
    behaviour: UnaryHandler = handler.unary_unary  # type: ignore[assignment]  # aio: async
    deserializer = handler.request_deserializer
    if deserializer is not None:
        deserializer = _TolerantDeserializer(deserializer, method)
        behaviour = _refusing_undecodable(behaviour)
    for interceptor in reversed(interceptors):  # the first listed ends up outermost
        behaviour = interceptor.wrap(behaviour, method)
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


class _WrappedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose unary handlers come out wrapped, each wrapped once."""

    def __init__(
        self, inner: GenericHandler, interceptors: Sequence[UnaryServerInterceptor]
    ) -> None:
        self._inner = inner
        self._interceptors = interceptors
        self._cache: dict[str, tuple[MethodHandler, MethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _wrapped(handler, method, self._interceptors))
            self._cache[method] = cached
        return cached[1]


class Registrar:
    """Stands in for the server while servicers are added (the generated add_*_to_server
    functions call these two methods), handing the server wrapped handlers."""

    def __init__(self, server: grpc.aio.Server, interceptors: Sequence[UnaryServerInterceptor]):
        self.server = server
        self.interceptors = list(interceptors)

    def add_generic_rpc_handlers(self, handlers: Iterable[GenericHandler]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self.interceptors) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, MethodHandler]
    ) -> None:
        self.server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service,
            {
                name: _wrapped(handler, f"/{service}/{name}", self.interceptors)
                for name, handler in handlers.items()
            },
        )


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
