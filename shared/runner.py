"""Start one service process: settings, logging, the service's own wiring, then serve."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from pydantic import ValidationError

from shared.grpc.server import PortInUse, ServiceDefinition, cancel_and_wait, serve
from shared.logging import configure_logging
from shared.settings import ServiceName, ServiceSettings
from shared.telemetry import configure_tracing

log = logging.getLogger(__name__)

Builder = Callable[[Any], Awaitable[ServiceDefinition]]
# How long the tasks still pending when serve() returns get to end once cancelled.
LEFTOVER_SECONDS = 2.0


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
    configure_logging(name, settings.log_level, settings.log_format, access_log=settings.access_log)
    tracing = configure_tracing(name, settings)
    address = f"{settings.grpc_host}:{settings.port_of(name)}"

    async def main() -> None:
        definition = await build(settings)
        definition.access_log = settings.access_log
        await serve(
            address,
            definition,
            grace=settings.grpc_grace_seconds,
            metrics_port=settings.metrics_port_of(name),
            max_connection_age=settings.grpc_max_connection_age_seconds,
        )

    try:
        run_bounded(main())
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


def run_bounded(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, except that the tasks left when main returns get a bounded wait.

    asyncio.run cancels leftovers and then waits for them without a limit, so a single task
    that swallows its cancellation (a broad except inside a loop) would keep the process
    alive after it reported itself stopped. Here such a task is logged and abandoned with the
    loop; main has already drained the server and run the cleanups by then.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftovers = list(asyncio.all_tasks(loop))
            if leftovers:
                loop.run_until_complete(cancel_and_wait(leftovers, LEFTOVER_SECONDS, "task"))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
