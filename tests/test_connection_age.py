"""Connections past GRPC_MAX_CONNECTION_AGE_SECONDS are closed gracefully: the client
reconnects (and so resolves its dns:/// target again) without a single call failing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from shared.grpc.server import ServiceDefinition, start_server, stop_server
from shared.settings import EndpointSettings

_SERVICE = "stylebase.test.v1.PeerService"
_METHOD = f"/{_SERVICE}/Peer"


def _peer_definition() -> ServiceDefinition:
    async def peer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # The client's address and port: a new port is a new connection.
        return context.peer().encode()

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Peer": grpc.unary_unary_rpc_method_handler(peer)}
    )
    return ServiceDefinition(
        name="peer",
        full_names=[_SERVICE],
        register=lambda server: server.add_generic_rpc_handlers((handler,)),
    )


async def _peers_seen(max_connection_age: float, calls: int) -> tuple[set[str], list[str]]:
    running = await start_server(
        "127.0.0.1:0", _peer_definition(), max_connection_age=max_connection_age
    )
    peers: set[str] = set()
    failures: list[str] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary(_METHOD, None, None)
            for _ in range(calls):
                try:
                    peers.add((await call(b"", timeout=5)).decode())
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc.code().name)
                await asyncio.sleep(0.05)
    finally:
        await stop_server(running, grace=1)
    return peers, failures


async def test_a_connection_past_its_age_is_replaced_without_failing_a_call() -> None:
    # 60 calls over about 3 s against a 0.5 s age: several connections, no failed call.
    peers, failures = await _peers_seen(0.5, 60)
    assert failures == []
    assert len(peers) >= 2, peers


async def test_age_zero_keeps_one_connection() -> None:
    peers, failures = await _peers_seen(0, 30)
    assert failures == []
    assert len(peers) == 1, peers


@pytest.mark.parametrize("value", ["-1", "86401"])
def test_the_setting_refuses_nonsense(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_MAX_CONNECTION_AGE_SECONDS", value)
    with pytest.raises(ValueError, match="grpc_max_connection_age_seconds"):
        EndpointSettings()
