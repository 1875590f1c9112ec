"""The server builder every service uses: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from shared.grpc.base import Registrar, UnaryServerInterceptor
from shared.grpc.interceptors import ErrorInterceptor
from shared.metrics import MetricsServer, tracked_pools
from shared.telemetry import TelemetryInterceptor
from stylebase.admin.v1 import admin_service_pb2 as admin_pb
from stylebase.admin.v1 import admin_service_pb2_grpc as admin_grpc

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Health name that is SERVING while the process runs, whatever its dependencies do:
# liveness probes ask for it, so an outage of PostgreSQL or Redis never restarts a pod.
LIVENESS = "liveness"


class PortInUse(RuntimeError):
    pass


@dataclass
class ServiceDefinition:
    """What a service hands the builder: its servicers and its lifecycle hooks."""

    name: str
    # Fully qualified gRPC service names, for health and reflection.
    full_names: Sequence[str]
    # Called with a Registrar, which the generated add_*_to_server functions take as a server.
    register: Callable[[Any], None]
    # Raises while a dependency the service cannot work without is down.
    readiness: Callable[[], Awaitable[None]] | None = None
    # Run after the server has drained: close pools and clients.
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Started with the server, cancelled on shutdown (canaries, subscribers).
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    interceptors: list[UnaryServerInterceptor] = field(default_factory=list)
    # Filled in by create_server, so a service can publish extra health names.
    health: HealthServicer | None = None


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    definition: ServiceDefinition
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class AdminServicer(admin_grpc.AdminServiceServicer):
    """Pool statistics of whatever database pools this process has."""

    async def GetPoolStats(
        self,
        request: admin_pb.GetPoolStatsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb.GetPoolStatsResponse:
        pools = []
        for pool in tracked_pools():
            status = pool.pool_status()
            pools.append(
                admin_pb.PoolStats(
                    name=pool.name,
                    size=status["size"],
                    checked_out=status["checked_out"],
                    overflow=status["overflow"],
                    idle=status["idle"],
                )
            )
        return admin_pb.GetPoolStatsResponse(pools=sorted(pools, key=lambda p: p.name))


ADMIN_SERVICE = admin_pb.DESCRIPTOR.services_by_name["AdminService"].full_name


def create_server(address: str, definition: ServiceDefinition) -> tuple[grpc.aio.Server, int]:
    """Build (not start) the server and bind it; port 0 picks a free port."""
    # Telemetry is outermost, so it records the status the client really gets.
    interceptors = [TelemetryInterceptor(), *definition.interceptors, ErrorInterceptor()]
    server = grpc.aio.server()
    registrar = Registrar(server, interceptors)
    definition.register(registrar)
    admin_grpc.add_AdminServiceServicer_to_server(AdminServicer(), registrar)  # type: ignore[arg-type]
    health = HealthServicer()
    definition.health = health
    health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
    reflection.enable_server_reflection(
        [
            *definition.full_names,
            ADMIN_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use")
    return server, port


async def _watch_readiness(running: RunningServer) -> None:
    """NOT_SERVING until the dependencies answer; re-checked so probes follow outages."""
    definition = running.definition
    names = ["", *definition.full_names]
    while True:
        try:
            if definition.readiness is not None:
                await asyncio.wait_for(definition.readiness(), timeout=5)
            status = SERVING
        except Exception as exc:  # any failure of the check means not ready
            log.warning("%s not ready: %s", definition.name, exc)
            status = NOT_SERVING
        for name in names:
            await running.health.set(name, status)
        await asyncio.sleep(5 if status == SERVING else 0.5)


async def start_server(address: str, definition: ServiceDefinition) -> RunningServer:
    server, port = create_server(address, definition)
    await server.start()
    assert definition.health is not None
    running = RunningServer(server, port, definition.health, definition)
    for name in ["", *definition.full_names]:
        await running.health.set(name, NOT_SERVING)
    await running.health.set(LIVENESS, SERVING)
    running.tasks.append(asyncio.create_task(_watch_readiness(running)))
    running.tasks.extend(asyncio.create_task(job()) for job in definition.background)
    log.info("%s listening on %s", definition.name, address.rsplit(":", 1)[0] + f":{port}")
    return running


async def stop_server(running: RunningServer, grace: float) -> None:
    """Report NOT_SERVING, stop accepting, drain in-flight RPCs, then release resources."""
    await running.health.enter_graceful_shutdown()
    for task in running.tasks:
        task.cancel()
    for task in running.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await running.server.stop(grace)
    for cleanup in running.definition.cleanups:
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup of %s failed", running.definition.name)
    log.info("%s stopped", running.definition.name)


def start_metrics(host: str, port: int, variable: str) -> MetricsServer | None:
    """The Prometheus endpoint; a busy port costs the metrics, not the service."""
    try:
        metrics = MetricsServer(host.strip("[]"), port)
    except OSError as exc:
        log.warning(
            "metrics not served: cannot listen on %s:%s (%s); set %s", host, port, exc, variable
        )
        return None
    log.info("metrics on http://%s:%s/metrics", host, metrics.port)
    return metrics


async def serve(
    address: str,
    definition: ServiceDefinition,
    *,
    grace: float = 5.0,
    metrics_port: int = 0,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    metrics_port > 0 also serves Prometheus metrics over HTTP on the gRPC host.
    """
    running = await start_server(address, definition)
    host = address.rsplit(":", 1)[0]
    variable = f"{definition.name.upper()}_METRICS_PORT"
    metrics = start_metrics(host, metrics_port, variable) if metrics_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        waiter = asyncio.create_task(running.server.wait_for_termination())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        waiter.cancel()
    finally:
        await stop_server(running, grace)
        if metrics is not None:
            metrics.stop()
