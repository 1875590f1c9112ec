"""The fault proxy itself: it forwards, cuts, stalls and fires one-shot cuts on a pattern."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _roundtrip(port: int, payload: bytes, wait: float = 2.0) -> bytes:
    """Send payload and return the answer; b"" when the connection was closed or reset."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(1024), wait)
        except ConnectionError:
            return b""
    finally:
        writer.close()


async def test_proxy_forwards_and_cuts_on_a_pattern(echo: int) -> None:
    proxy = FaultProxy(echo).start()
    try:
        assert await _roundtrip(proxy.port, b"hello") == b"hello"
        fired = proxy.cut_on(b"COMMIT")
        # The pattern is forwarded (the echo server sees it) but the answer never comes back.
        assert await _roundtrip(proxy.port, b"COMMIT") == b""
        assert fired.wait(2)
        assert await _roundtrip(proxy.port, b"again") == b"again"
    finally:
        proxy.stop()


async def test_stalled_proxy_holds_bytes_until_resumed(echo: int) -> None:
    proxy = FaultProxy(echo).start()
    try:
        proxy.stall()
        with pytest.raises(TimeoutError):
            await _roundtrip(proxy.port, b"held", wait=0.3)
        proxy.resume()
        assert await _roundtrip(proxy.port, b"flows") == b"flows"
    finally:
        proxy.stop()
