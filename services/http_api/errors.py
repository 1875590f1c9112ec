"""One JSON shape for every error, and the mapping from gRPC statuses to HTTP ones.

{"error": "artist_not_found", "message": "..."} everywhere; a 400 also lists its
field violations. The error code is the google.rpc ErrorInfo reason the service gave,
lower-cased, so HTTP clients branch on the same reasons gRPC clients do.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db.idempotency import REUSED_REASON
from shared.grpc.status import error_info, field_violations
from shared.logging import request_id_var

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    # The caller went away or the upstream dropped the call: worth a retry, like 503.
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Statuses that tell the client to come back later.
RETRY_LATER = frozenset({429, 503})


class FieldViolation(BaseModel):
    field: str
    description: str


class ErrorBody(BaseModel):
    """Every error response."""

    error: str
    message: str
    # Only on 400: each rule the request broke.
    field_violations: list[FieldViolation] | None = None


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.violations = violations or []

    @classmethod
    def invalid(cls, field: str, rule: str) -> ApiError:
        return cls(400, "invalid_argument", f"{field}: {rule}", [(field, rule)])


def from_rpc_error(exc: grpc.aio.AioRpcError) -> ApiError:
    code = exc.code()
    status = HTTP_STATUS.get(code)
    if status is None:
        # UNKNOWN, INTERNAL, DATA_LOSS, UNIMPLEMENTED: a bug upstream; its text stays in logs.
        log.error("upstream answered %s: %s", code.name, exc.details())
        return internal()
    info = error_info(exc)
    reason = info.reason.lower() if info is not None and info.reason else code.name.lower()
    message = exc.details() or code.name.lower().replace("_", " ")
    if info is not None and info.reason == "ARTIST_NOT_FOUND" and "artist_name" in info.metadata:
        message = f"Artist '{info.metadata['artist_name']}' not found in database"
    if info is not None and info.reason == REUSED_REASON:
        # The Idempotency-Key convention: a key reused for a different request conflicts.
        return ApiError(409, reason, message)
    violations = field_violations(exc) if status == 400 else []
    return ApiError(status, reason, message, violations)


def internal() -> ApiError:
    return ApiError(
        500,
        "internal",
        f"internal error; the server log has the details under request id {request_id_var.get()}",
    )


def error_response(error: ApiError, retry_after: int) -> Response:
    body: dict[str, Any] = {"error": error.error, "message": error.message}
    if error.status == 400:
        body["field_violations"] = [
            {"field": field, "description": rule} for field, rule in error.violations
        ]
    headers = {"Retry-After": str(retry_after)} if error.status in RETRY_LATER else None
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


def _field_of(location: tuple[Any, ...]) -> str:
    # ("query", "limit") -> "limit"; ("body", "user_params", "bars") -> "user_params.bars"
    parts = [str(part) for part in location[1:]] or [str(part) for part in location]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> ApiError:
    violations = [(_field_of(tuple(e.get("loc", ()))), str(e.get("msg", ""))) for e in exc.errors()]
    if not violations:
        return ApiError.invalid("body", "the request is malformed")
    field, rule = violations[0]
    message = f"{field}: {rule}"
    if len(violations) > 1:
        message += f" (and {len(violations) - 1} more)"
    return ApiError(400, "invalid_argument", message, violations)


def install(app: Any, retry_after: int) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc, retry_after)

    async def on_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc), retry_after)

    async def on_rpc_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return error_response(from_rpc_error(exc), retry_after)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own: no route for the path (404) or the method (405).
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, ApiError):
            # Raised while FastAPI read the body (its size limit), which wraps it in a 400.
            return error_response(exc.__cause__, retry_after)
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = f"no endpoint {request.method} {request.url.path}"
        if exc.status_code not in (404, 405):
            message = str(exc.detail)
        response = error_response(ApiError(exc.status_code, error, message), retry_after)
        response.headers.update(exc.headers or {})  # 405 carries Allow
        return response

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(grpc.aio.AioRpcError, on_rpc_error)
