"""Channels to other services spread their calls over every address the target resolves
to (every pod behind a headless Service), not just the first."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from shared.grpc.channels import service_channel

METHOD = "/stylebase.test.v1.Replica/Name"


def _replica(name: bytes) -> grpc.GenericRpcHandler[bytes, bytes]:
    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return name

    handler = grpc.unary_unary_rpc_method_handler(answer)
    return grpc.method_handlers_generic_handler("stylebase.test.v1.Replica", {"Name": handler})


@pytest.fixture
async def replicas() -> AsyncIterator[list[int]]:
    servers: list[grpc.aio.Server] = []
    ports: list[int] = []
    for index in range(3):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_replica(f"replica-{index}".encode())])
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    try:
        yield ports
    finally:
        for server in servers:
            await server.stop(0)


async def test_a_service_channel_spreads_calls_over_every_resolved_address(
    replicas: list[int],
) -> None:
    # One target naming three addresses: what DNS answers for a headless Service.
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in replicas)
    async with service_channel(target) as channel:
        call = channel.unary_unary(METHOD, None, None)
        await call(b"", timeout=5)
        answered = Counter([await call(b"", timeout=5) for _ in range(60)])
    assert set(answered) == {b"replica-0", b"replica-1", b"replica-2"}, answered
    # round_robin takes them in turn once all three are connected.
    assert min(answered.values()) >= 15, answered
