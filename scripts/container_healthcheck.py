"""The image's HEALTHCHECK: probes whichever service the container's command serves.

One image runs every service, and a Dockerfile's HEALTHCHECK cannot see the command, so this
reads it from PID 1 and asks that service's own health endpoint: the gRPC health service at
its port, or the HTTP API's /readyz. Any other command (migrate, backups) has nothing to ask.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from services.http_api import probe as http_probe
from shared.grpc.probe import probe as grpc_probe
from shared.settings import DEFAULT_HTTP_API_PORT, DEFAULT_PORTS


def served(command: list[str]) -> str | None:
    """The service named by `stylebase serve <service>` in the command, if any."""
    if "serve" not in command:
        return None
    position = command.index("serve") + 1
    return command[position] if position < len(command) else None


def check(command: list[str], environment: Mapping[str, str]) -> int:
    service = served(command)
    if service is None:
        return 0
    if service == "http_api":
        port = environment.get("HTTP_API_PORT") or str(DEFAULT_HTTP_API_PORT)
        return http_probe.main([f"http://127.0.0.1:{port}/readyz"])
    if service not in DEFAULT_PORTS:
        return 1
    port = environment.get(f"{service.upper()}_PORT") or str(DEFAULT_PORTS[service])
    return 0 if grpc_probe(f"127.0.0.1:{port}") else 1


def pid1_command() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


if __name__ == "__main__":
    sys.exit(check(pid1_command(), os.environ))
