"""What any Stylebase server tells a client about itself, over real gRPC on loopback:
Health/List, reflection v1 (by buf curl, a client that speaks it) next to v1alpha (by
grpcurl 1.8, which speaks only that), and the request id in every answer's trailers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import errors
from shared.grpc.introspection import REFLECTION_V1, REFLECTION_V1ALPHA
from shared.grpc.server import LIVENESS, ServiceDefinition, start_server, stop_server
from shared.grpc.status import error_info

BIN = str(Path(sys.executable).parent)
BUF = shutil.which("buf", path=BIN) or "buf"
GRPCURL = shutil.which("grpcurl", path=BIN) or "grpcurl"
SERVICE = "test.Introspected"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _raiser(exc: BaseException) -> Callable[[bytes, Any], Any]:
    async def handler(request: bytes, context: Any) -> bytes:
        raise exc

    return handler


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok"


HANDLERS = {
    "Ok": _ok,
    "NotFound": _raiser(errors.ArtistNotFound("Unknown Artist")),
    "Unexpected": _raiser(RuntimeError("boom")),
    "Pending": _raiser(NotImplementedError()),
}


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[str, ServiceDefinition]]:
    generic = grpc.method_handlers_generic_handler(
        SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in HANDLERS.items()}
    )
    definition = ServiceDefinition(
        name="introspection-test",
        full_names=[SERVICE],
        register=lambda registrar: registrar.add_generic_rpc_handlers((generic,)),
    )
    running = await start_server("127.0.0.1:0", definition)
    yield f"127.0.0.1:{running.port}", definition
    await stop_server(running, grace=0)


@pytest.fixture
async def channel(server: tuple[str, ServiceDefinition]) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server[0]) as chan:
        yield chan


def _request_id_of(metadata: Any) -> list[str]:
    return [value for key, value in metadata or () if key == "x-request-id"]


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("Ok", grpc.StatusCode.OK),
        ("NotFound", grpc.StatusCode.NOT_FOUND),
        ("Unexpected", grpc.StatusCode.INTERNAL),
        ("Pending", grpc.StatusCode.UNIMPLEMENTED),
    ],
)
async def test_every_answer_carries_the_request_id_in_its_trailers(
    channel: grpc.aio.Channel, method: str, code: grpc.StatusCode
) -> None:
    call = channel.unary_unary(f"/{SERVICE}/{method}", None, None)(
        b"", metadata=(("x-request-id", "req-7"),), timeout=5
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    assert await call.code() == code
    assert _request_id_of(await call.trailing_metadata()) == ["req-7"]


async def test_a_created_request_id_is_the_one_echoed(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unexpected", None, None)(b"", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    (created,) = _request_id_of(caught.value.trailing_metadata())
    # The one the INTERNAL message tells the caller to look up.
    assert len(created) == 32 and created in (caught.value.details() or "")


async def test_a_domain_error_keeps_its_details_beside_the_request_id(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/NotFound", None, None)(b"", timeout=5)
    info = error_info(caught.value)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"


async def test_health_list_answers_every_name_with_its_status(
    server: tuple[str, ServiceDefinition], channel: grpc.aio.Channel
) -> None:
    _, definition = server
    assert definition.health is not None
    await definition.health.set(SERVICE, NOT_SERVING)
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: answer.status for name, answer in reply.statuses.items()}
    assert statuses[SERVICE] == NOT_SERVING
    assert statuses[LIVENESS] == SERVING and statuses[""] == SERVING
    await definition.health.set(SERVICE, SERVING)
    reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    assert reply.statuses[SERVICE].status == SERVING


async def _run(*args: str) -> str:
    # A subprocess awaited, not run: the server answers on this test's own event loop.
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_lists_and_calls_by_reflection(
    server: tuple[str, ServiceDefinition], protocol: str
) -> None:
    url = f"http://{server[0]}"
    common = ("--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol)
    listed = (await _run(BUF, "curl", *common, "--list-services", url)).split()
    assert {SERVICE, "grpc.health.v1.Health", REFLECTION_V1, REFLECTION_V1ALPHA} <= set(listed)
    # The schema of a real message fetched by reflection, then the call made with it.
    health = await _run(
        BUF,
        "curl",
        *common,
        "-d",
        f'{{"service": "{LIVENESS}"}}',
        f"{url}/grpc.health.v1.Health/Check",
    )
    assert '"status": "SERVING"' in health


async def test_grpcurl_still_finds_everything_over_v1alpha(
    server: tuple[str, ServiceDefinition],
) -> None:
    listed = (await _run(GRPCURL, "-plaintext", server[0], "list")).split()
    assert {SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA} <= set(listed)
    described = await _run(GRPCURL, "-plaintext", server[0], "describe", "grpc.health.v1.Health")
    assert "rpc List" in described
