"""A loopback TCP proxy that tests use to cut, stall and partition real connections.

It runs its own event loop in a daemon thread, so synchronous and asynchronous tests drive it
alike and the faults it injects do not depend on the test's own loop being scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.embedded.ports import free_port

UPSTREAM = "upstream"  # client → server
DOWNSTREAM = "downstream"  # server → client


@dataclass
class _Trigger:
    """One-shot: when a chunk in `direction` holds `pattern`, forward it, then cut the pair."""

    pattern: bytes
    direction: str
    # Seconds to keep swallowing the other direction before closing, so the server has
    # finished (and committed) what the forwarded chunk asked for.
    linger: float
    fired: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    cut: bool = False

    def close(self) -> None:
        self.cut = True
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()  # RST, as a dead peer or a broken network gives


class FaultProxy:
    """Listens on 127.0.0.1:port and forwards to upstream_host:upstream_port.

    cut(): reset every open connection. stall(): stop forwarding in both directions (bytes
    are held, connections stay open: a frozen peer or a silent partition); resume() lets
    them flow again. blackhole(): stall, and also accept new connections without forwarding
    them. refuse(): reset new connections at once (a peer that is down). cut_on(): cut the
    connection that sends a chosen byte pattern, right after the pattern was forwarded.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.connections = 0
        self._pairs: set[_Pair] = set()
        # Set and cleared on the proxy's own loop only (asyncio events are not thread-safe).
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._triggers: list[_Trigger] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- faults ------------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        cut = self._call(self._cut_all)
        assert isinstance(cut, int)
        return cut

    def stall(self) -> None:
        self._call(self._flowing.clear)

    def resume(self) -> None:
        self._refusing = False
        self._call(self._flowing.set)

    def blackhole(self) -> None:
        """A silent partition: nothing flows, new connections hang."""
        self.stall()

    def refuse(self) -> None:
        """New connections are reset at once; open ones are cut."""
        self._refusing = True
        self.cut()

    def cut_on(
        self, pattern: bytes, *, direction: str = UPSTREAM, linger: float = 0.3
    ) -> threading.Event:
        """Arm a one-shot cut; the returned event is set once it fired."""
        trigger = _Trigger(pattern, direction, linger)
        with self._lock:
            self._triggers.append(trigger)
        return trigger.fired

    # -- the loop's side ---------------------------------------------------------------

    def _call(self, make: Callable[[], object]) -> object:
        async def run() -> object:
            outcome = make()
            if asyncio.iscoroutine(outcome):
                return await outcome
            return outcome

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()

    def _cut_all(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        self._pairs.clear()
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        await asyncio.gather(
            self._pump(reader, up_writer, pair, UPSTREAM),
            self._pump(up_reader, writer, pair, DOWNSTREAM),
            return_exceptions=True,
        )
        self._pairs.discard(pair)
        pair.close()

    def _armed(self, chunk: bytes, direction: str) -> _Trigger | None:
        with self._lock:
            for trigger in self._triggers:
                if trigger.direction == direction and trigger.pattern in chunk:
                    self._triggers.remove(trigger)
                    return trigger
        return None

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        direction: str,
    ) -> None:
        while not pair.cut:
            chunk = await reader.read(65536)
            if not chunk:
                with contextlib.suppress(Exception):
                    writer.write_eof()
                return
            await self._flowing.wait()
            if pair.cut:
                return
            trigger = self._armed(chunk, direction)
            writer.write(chunk)
            await writer.drain()
            if trigger is not None:
                # Swallow whatever answers come back, then cut: the sender never hears
                # whether its request (a COMMIT, say) took effect.
                pair.cut = True
                await asyncio.sleep(trigger.linger)
                pair.close()
                trigger.fired.set()
                return
