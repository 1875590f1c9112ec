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
    traceback and never sent to the client.
    """

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id_var.set(_incoming_request_id(context))
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
                await context.abort_with_status(to_grpc_status(error))  # type: ignore[attr-defined]
            except NotImplementedError:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet"
                )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("%s failed unexpectedly", method, extra={"grpc_method": method})
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error; see the server log for request id {request_id_var.get()}",
                )
            finally:
                request_id_var.reset(token)

        return wrapper
