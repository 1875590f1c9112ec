"""The error interceptor over real gRPC on loopback: domain errors keep code and details."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from shared import errors
from shared.grpc.server import ServiceDefinition, start_server, stop_server
from shared.grpc.status import error_info, field_violations
from shared.logging import request_id_var

SECRET = "password=hunter2"


def _raiser(exc: BaseException) -> Callable[[bytes, Any], Any]:
    async def handler(request: bytes, context: Any) -> bytes:
        raise exc

    return handler


async def _echo_request_id(request: bytes, context: Any) -> bytes:
    return request_id_var.get().encode()


HANDLERS = {
    "InvalidArgument": _raiser(errors.InvalidArgument("profile.embedding", "must have 384 values")),
    "ArtistNotFound": _raiser(errors.ArtistNotFound("Unknown Artist")),
    "AlreadyExists": _raiser(errors.AlreadyExists("artist exists")),
    "FailedPrecondition": _raiser(errors.FailedPrecondition("artist has no embedding")),
    "Aborted": _raiser(errors.Aborted("version mismatch")),
    "Unavailable": _raiser(errors.Unavailable("database down")),
    "DeadlineExceeded": _raiser(errors.DeadlineExceeded("too slow")),
    "Unexpected": _raiser(RuntimeError(f"boom {SECRET}")),
    "Pending": _raiser(NotImplementedError("Method not implemented!")),
    "Echo": _echo_request_id,
}


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    generic = grpc.method_handlers_generic_handler(
        "test.Errors",
        {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in HANDLERS.items()},
    )
    definition = ServiceDefinition(
        name="errors-test",
        full_names=["test.Errors"],
        register=lambda server: server.add_generic_rpc_handlers((generic,)),
    )
    running = await start_server("127.0.0.1:0", definition)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan
    await stop_server(running, grace=0)


def _method(channel: grpc.aio.Channel, name: str) -> Any:
    # Raw bytes both ways: no serializers.
    return channel.unary_unary(f"/test.Errors/{name}", None, None)


async def _call(channel: grpc.aio.Channel, name: str, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _method(channel, name)(b"", timeout=5, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT),
        ("ArtistNotFound", grpc.StatusCode.NOT_FOUND),
        ("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS),
        ("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("Aborted", grpc.StatusCode.ABORTED),
        ("Unavailable", grpc.StatusCode.UNAVAILABLE),
        ("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("Pending", grpc.StatusCode.UNIMPLEMENTED),
    ],
)
async def test_domain_error_keeps_its_code(
    channel: grpc.aio.Channel, name: str, code: grpc.StatusCode
) -> None:
    error = await _call(channel, name)
    assert error.code() == code


async def test_not_found_carries_reason_artist_not_found(channel: grpc.aio.Channel) -> None:
    error = await _call(channel, "ArtistNotFound")
    assert error.details() == "Artist 'Unknown Artist' not found"
    info = error_info(error)
    assert info is not None
    assert info.reason == "ARTIST_NOT_FOUND"
    assert info.metadata["artist_name"] == "Unknown Artist"


async def test_invalid_argument_names_field_and_rule(channel: grpc.aio.Channel) -> None:
    error = await _call(channel, "InvalidArgument")
    assert error.details() == "profile.embedding: must have 384 values"
    assert field_violations(error) == [("profile.embedding", "must have 384 values")]


async def test_unexpected_error_is_internal_and_hides_its_text(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    error = await _call(channel, "Unexpected", metadata=(("x-request-id", "req-42"),))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (error.details() or "")
    assert "req-42" in (error.details() or "")
    assert any(SECRET in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_request_id_is_taken_from_metadata_or_created(channel: grpc.aio.Channel) -> None:
    echo = _method(channel, "Echo")
    given = await echo(b"", metadata=(("x-request-id", "abc-123"),), timeout=5)
    assert given == b"abc-123"
    created = await echo(b"", timeout=5)
    assert len(created) == 32 and created != given
