"""Domain errors, each carrying the gRPC status code it maps to.

Servicers and repositories raise these; one server interceptor turns them into
statuses with google.rpc details (see shared.grpc.interceptors).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

DOMAIN = "stylebase.dev"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class StylebaseError(Exception):
    """Base of every error a client may see; code decides the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = ""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or []


class InvalidArgument(StylebaseError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}", violations=[FieldViolation(field, rule)])

    @classmethod
    def many(cls, violations: list[FieldViolation]) -> InvalidArgument:
        first = violations[0]
        error = cls(first.field, first.description)
        if len(violations) > 1:
            error.message = f"{error.message} (and {len(violations) - 1} more)"
            error.args = (error.message,)
        error.violations = list(violations)
        return error


class NotFound(StylebaseError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class ArtistNotFound(NotFound):
    reason = "ARTIST_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"Artist '{name}' not found", metadata={"artist_name": name})


class AlreadyExists(StylebaseError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(StylebaseError):
    """Do not retry until the state changes."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Aborted(StylebaseError):
    """Retry the whole transaction (a version conflict, a serialization failure)."""

    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class Unavailable(StylebaseError):
    """A dependency is down; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(StylebaseError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"
