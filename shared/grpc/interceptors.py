"""Server interceptors: request ids, domain errors turned into gRPC statuses, access lines."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from shared.errors import StylebaseError
from shared.grpc.base import UnaryHandler, UnaryServerInterceptor
from shared.grpc.status import to_grpc_status
from shared.logging import ACCESS_LOGGER, new_request_id, request_id_var

log = logging.getLogger(__name__)
access = logging.getLogger(ACCESS_LOGGER)

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

    With access_log, each call also gets one line with the status the client sees. Here,
    because this is where the code and the request id are both known.
    """

    def __init__(self, *, access_log: bool = False) -> None:
        self.access_log = access_log

    def wrap(self, inner: UnaryHandler, method: str) -> UnaryHandler:
        logged = self.access_log

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            # The peer read now: once a deadline has passed, grpc no longer tells it.
            started, peer = (time.perf_counter(), context.peer()) if logged else (0.0, "")
            code = "OK"
            request_id = _incoming_request_id(context)
            token = request_id_var.set(request_id)
            # Trailers go out with the status in the same frame; initial metadata sent
            # now would cost a write of its own on every call.
            echo = ((REQUEST_ID_KEY, request_id),)
            context.set_trailing_metadata(echo)
            try:
                return await inner(request, context)
            except StylebaseError as error:
                code = error.code.name
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
                code = grpc.StatusCode.UNIMPLEMENTED.name
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet", echo
                )
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except grpc.aio.AbortError:
                code = _aborted_code(context)
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL.name
                log.exception("%s failed unexpectedly", method, extra={"grpc_method": method})
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error; see the server log for request id {request_id}",
                    echo,
                )
            finally:
                if logged:
                    _log_access(method, code, started, peer)
                request_id_var.reset(token)

        return wrapper


def _log_access(method: str, code: str, started: float, peer: str) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    # The request id comes with the record, from request_id_var, like any line of the call.
    access.info(
        "%s %s %.3f ms %s",
        method,
        code,
        duration_ms,
        peer,
        extra={"grpc_method": method, "grpc_code": code, "duration_ms": duration_ms, "peer": peer},
    )


def _cancelled_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # grpc cancels the handler both when the client gives up and when its deadline passes.
    left = context.time_remaining()
    expired = left is not None and left <= 0
    return (grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED).name


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # Aborted further in, by whoever called context.abort: grpc holds the code.
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN.name
