"""Build google.rpc statuses (with ErrorInfo and BadRequest details) from domain errors."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.errors import DOMAIN, StylebaseError


def to_grpc_status(error: StylebaseError) -> grpc.Status:
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    code: int = error.code.value[0]
    status = status_pb2.Status(code=code, message=error.message, details=details)
    return rpc_status.to_status(status)


def error_info(call: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, for clients that branch on the reason."""
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def field_violations(call: grpc.aio.AioRpcError | grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


__all__ = ["code_pb2", "error_info", "field_violations", "to_grpc_status"]
