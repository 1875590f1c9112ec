"""Start one service process: settings, logging, the service's own wiring, then serve."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

from pydantic import ValidationError

from shared.grpc.server import PortInUse, ServiceDefinition, serve
from shared.logging import configure_logging
from shared.settings import ServiceName, ServiceSettings
from shared.telemetry import configure_tracing

log = logging.getLogger(__name__)

Builder = Callable[[Any], Awaitable[ServiceDefinition]]


def load(name: ServiceName) -> tuple[type[ServiceSettings], Builder]:
    module = importlib.import_module(f"services.{name}.app")
    return cast(type[ServiceSettings], module.Settings), cast(Builder, module.build)


def run_service(name: ServiceName) -> int:
    settings_cls, build = load(name)
    try:
        settings = settings_cls()
    except ValidationError as exc:
        print(f"{name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(name, settings.log_level, settings.log_format)
    tracing = configure_tracing(name, settings)
    address = f"{settings.grpc_host}:{settings.port_of(name)}"

    async def main() -> None:
        definition = await build(settings)
        await serve(
            address,
            definition,
            grace=settings.grpc_grace_seconds,
            metrics_port=settings.metrics_port_of(name),
        )

    try:
        asyncio.run(main())
    except PortInUse as exc:
        log.error("%s (set %s_PORT to a free port)", exc, name.upper())
        return 2
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if tracing is not None:
            tracing.shutdown()  # flushes spans still batched
    return 0
