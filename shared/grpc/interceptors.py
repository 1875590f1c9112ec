"""Server interceptors: request ids, and domain errors turned into gRPC statuses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from shared.errors import StylebaseError
from shared.grpc.base import UnaryHandler, UnaryServerInterceptor
from shared.grpc.status import to_grpc_status
from shared.logging import new_request_id, request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"


def _incoming_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return new_request_id()


class ErrorInterceptor(UnaryServerInterceptor):
    """One place that maps exceptions to statuses.

    Domain errors keep their code, message and details; an RPC whose issue is
    still open answers UNIMPLEMENTED; anything else is INTERNAL, logged with its
    traceback and never sent to the client. Every answer, error or not, carries the
    request id in its trailers, the one to look up in the server log.
    """

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = _incoming_request_id(context)
            token = request_id_var.set(request_id)
            # Trailers go out with the status in the same frame; initial metadata sent
            # now would cost a write of its own on every call.
            echo = ((REQUEST_ID_KEY, request_id),)
            context.set_trailing_metadata(echo)
            try:
                return await inner(request, context)
            except StylebaseError as error:
                log.info(
                    "%s failed: %s %s",
                    method,
                    error.code.name,
                    error.message,
                    extra={"grpc_method": method, "grpc_code": error.code.name},
                )
                status = to_grpc_status(error)
                await context.abort(status.code, status.details, (*status.trailing_metadata, *echo))
            except NotImplementedError:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet", echo
                )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("%s failed unexpectedly", method, extra={"grpc_method": method})
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error; see the server log for request id {request_id}",
                    echo,
                )
            finally:
                request_id_var.reset(token)

        return wrapper
