"""The process: settings, logging, tracing, a bound socket, then uvicorn until SIGTERM.

uvicorn drains on SIGTERM and SIGINT: it stops accepting, lets the requests in flight
finish for up to GRPC_GRACE_SECONDS, then runs the app's shutdown (closing the channels).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import uvicorn
from pydantic import ValidationError

from services.http_api.app import create_app
from services.http_api.config import Settings
from services.http_api.protocol import HttpProtocol
from shared.logging import configure_logging
from shared.telemetry import configure_tracing

log = logging.getLogger("services.http_api")
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Server(uvicorn.Server):
    """uvicorn's server, exiting 0 once drained, as the gRPC services do: uvicorn itself
    raises the signal again after its shutdown, so the process would die of SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted connection: a response's head and body, written apart,
    # must not wait out the client's delayed ACK (40 ms) under Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    sock.set_inheritable(True)
    return sock


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"http_api: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        "http_api", settings.log_level, settings.log_format, access_log=settings.access_log
    )
    tracing = configure_tracing("http_api", settings)
    try:
        sock = bind(settings.grpc_host, settings.http_api_port)
    except OSError as exc:
        log.error("%s; set HTTP_API_PORT to a free port", exc)
        return 2
    config = uvicorn.Config(
        create_app(settings, traced=tracing is not None),
        loop="uvloop",
        http=HttpProtocol,
        lifespan="on",
        # Its loggers go through ours (shared.logging); its access log is replaced by
        # ACCESS_LOG's, in the middleware.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.grpc_grace_seconds)),
        # Above the default 5 s: a client's keep-alive pool reuses the connection.
        timeout_keep_alive=30,
    )
    server = Server(config)
    log.info("HTTP API listening on %s:%s", settings.grpc_host, sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if tracing is not None:
            tracing.shutdown()
    return 0 if server.started else 1
