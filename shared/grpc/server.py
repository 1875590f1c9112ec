"""The server builder every service uses: health, reflection, interceptors, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry

from shared.grpc.base import Registrar, UnaryServerInterceptor
from shared.grpc.interceptors import ErrorInterceptor
from shared.grpc.introspection import HEALTH_SERVICE, Health, enable_reflection
from shared.grpc.readiness import NOT_SERVING as NOT_SERVING  # re-exported for the services
from shared.grpc.readiness import SERVING as SERVING
from shared.grpc.readiness import Readiness, ReadinessGate
from shared.metrics import GRPC_SERVER, PROCESS, MetricsServer, SeriesGroup, registry, tracked_pools
from shared.telemetry import TelemetryInterceptor, background
from stylebase.admin.v1 import admin_service_pb2 as admin_pb
from stylebase.admin.v1 import admin_service_pb2_grpc as admin_grpc

log = logging.getLogger(__name__)

# Health name that is SERVING while the process runs, whatever its dependencies do:
# liveness probes ask for it, so an outage of PostgreSQL or Redis never restarts a pod.
LIVENESS = "liveness"
# Beyond the grace, how long shutdown waits for grpc to end the calls still running.
SERVER_STOP_MARGIN_SECONDS = 5.0
# How long shutdown waits for the background tasks, all together, once the drain is over.
TASK_STOP_SECONDS = 2.0
# How long shutdown waits for each cleanup (pool dispose, Redis, channels).
CLEANUP_SECONDS = 5.0


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
    # The series groups the service's metrics endpoint serves, besides the gRPC server's
    # and the process's own, which every service has (see shared.metrics).
    metrics: Sequence[SeriesGroup] = ()
    # One log line per call (ACCESS_LOG); run_service sets it from the settings.
    access_log: bool = False
    # Filled in by create_server, so a service can publish extra health names.
    health: HealthServicer | None = None
    # Filled in by create_server when there is a readiness check.
    gate: ReadinessGate | None = None


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


# How long calls on a connection past its age may still finish before it is closed.
CONNECTION_AGE_GRACE_SECONDS = 60.0


def server_options(max_connection_age: float) -> list[tuple[str, int]]:
    """Channel arguments of the server. A connection older than max_connection_age (seconds,
    with gRPC's own jitter of 10%) gets GOAWAY, so clients reconnect and resolve their dns:///
    target again: without it a client keeps its first addresses and never reaches the pods a
    scale-up added. 0 keeps connections for ever."""
    if max_connection_age <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(max_connection_age * 1000))),
        ("grpc.max_connection_age_grace_ms", round(CONNECTION_AGE_GRACE_SECONDS * 1000)),
    ]


def create_server(
    address: str, definition: ServiceDefinition, *, max_connection_age: float = 0
) -> tuple[grpc.aio.Server, int]:
    """Build (not start) the server and bind it; port 0 picks a free port."""
    # Telemetry is outermost, so it records the status the client really gets.
    interceptors = [
        TelemetryInterceptor(definition.full_names),
        *definition.interceptors,
        ErrorInterceptor(access_log=definition.access_log),
    ]
    if definition.readiness is not None:
        # Innermost: the error interceptor turns its refusals into statuses.
        definition.gate = ReadinessGate(definition.name, definition.full_names)
        interceptors.append(definition.gate)
    server = grpc.aio.server(options=server_options(max_connection_age))
    registrar = Registrar(server, interceptors)
    definition.register(registrar)
    admin_grpc.add_AdminServiceServicer_to_server(AdminServicer(), registrar)  # type: ignore[arg-type]
    health = Health()
    definition.health = health
    health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
    enable_reflection([*definition.full_names, ADMIN_SERVICE, HEALTH_SERVICE], server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use")
    return server, port


async def start_server(
    address: str, definition: ServiceDefinition, *, max_connection_age: float = 0
) -> RunningServer:
    server, port = create_server(address, definition, max_connection_age=max_connection_age)
    assert definition.health is not None
    running = RunningServer(server, port, definition.health, definition)
    readiness = Readiness(
        definition.name,
        definition.readiness,
        definition.health,
        ["", *definition.full_names],
        definition.gate,
    )
    # Readiness polling and the service's own loops are background work: the tasks created
    # under the marker inherit it, so their statements say origin=background and make no spans.
    with background():
        # The first check runs before the port takes calls, so the gate is right from the first.
        await readiness.update()
    await running.health.set(LIVENESS, SERVING)
    await server.start()
    with background():
        running.tasks.append(asyncio.create_task(readiness.watch(), name="readiness"))
        running.tasks.extend(
            asyncio.create_task(job(), name=getattr(job, "__qualname__", repr(job)))
            for job in definition.background
        )
    log.info("%s listening on %s", definition.name, address.rsplit(":", 1)[0] + f":{port}")
    return running


async def stop_server(running: RunningServer, grace: float) -> None:
    """Report NOT_SERVING, drain in-flight RPCs (refusing new ones), then release resources.

    Background tasks stop after the drain, so a draining gateway still hears invalidations;
    every step after the drain is bounded, so no task or cleanup can keep the process alive.
    """
    name = running.definition.name
    await running.health.enter_graceful_shutdown()
    # Never cancelled (that would abort the drain), only no longer waited for: grpc ends
    # the calls still running at the end of grace, and that takes it a moment at most.
    stopping = asyncio.ensure_future(running.server.stop(grace))
    await asyncio.wait([stopping], timeout=grace + SERVER_STOP_MARGIN_SECONDS)
    if not stopping.done():
        log.error("%s: the gRPC server had not stopped %s s after its grace", name, grace)
    await cancel_and_wait(running.tasks, TASK_STOP_SECONDS, f"{name} background task")
    for cleanup in running.definition.cleanups:
        await _bounded_cleanup(name, cleanup)
    log.info("%s stopped", name)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], within: float, what: str) -> None:
    """Cancel tasks and wait at most `within` seconds for them; one that will not end is
    logged by name and abandoned."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    # asyncio.wait, not wait_for or gather: those wait for a task that swallows its
    # cancellation for as long as it keeps running.
    if pending:
        await asyncio.wait(pending, timeout=within)
    for task in tasks:
        if not task.done():
            log.error("%s %s did not stop within %s s; abandoned", what, task.get_name(), within)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s %s had failed", what, task.get_name(), exc_info=task.exception())


async def _bounded_cleanup(name: str, cleanup: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.ensure_future(cleanup())
    task.set_name(getattr(cleanup, "__qualname__", repr(cleanup)))
    done, _ = await asyncio.wait([task], timeout=CLEANUP_SECONDS)
    if not done:
        task.cancel()
        log.error(
            "cleanup %s of %s did not finish within %s s; abandoned",
            task.get_name(),
            name,
            CLEANUP_SECONDS,
        )
    elif task.exception() is not None:
        log.error("cleanup %s of %s failed", task.get_name(), name, exc_info=task.exception())


def service_registry(definition: ServiceDefinition) -> CollectorRegistry:
    """What the service's metrics endpoint serves: its own groups, no other service's."""
    return registry(PROCESS, GRPC_SERVER, *definition.metrics)


def start_metrics(
    host: str, port: int, variable: str, served: CollectorRegistry
) -> MetricsServer | None:
    """The Prometheus endpoint; a busy port costs the metrics, not the service."""
    try:
        metrics = MetricsServer(host.strip("[]"), port, served)
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
    max_connection_age: float = 0,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    metrics_port > 0 also serves Prometheus metrics over HTTP on the gRPC host.
    """
    running = await start_server(address, definition, max_connection_age=max_connection_age)
    host = address.rsplit(":", 1)[0]
    variable = f"{definition.name.upper()}_METRICS_PORT"
    served = service_registry(definition)
    metrics = start_metrics(host, metrics_port, variable, served) if metrics_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, definition.name, sig, stop)
    try:
        # Only the signal is awaited: cancelling a wait_for_termination() would cancel
        # grpc's own shutdown future and turn the drain below into an abort.
        await stop.wait()
    finally:
        await stop_server(running, grace)
        if metrics is not None:
            metrics.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _on_signal(name: str, sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.info("%s already stopping; %s ignored", name, sig.name)
        return
    log.info("%s received %s: draining", name, sig.name)
    stop.set()
