"""'stylebase status': every service's health, version and load, as a client of the services.

Health is grpc.health.v1 Check (the HTTP API's /readyz); pool use the AdminService every
server offers; the cache hit rate the gateway's GetCacheStats; the backup age the backup
process's metrics endpoint, when one runs. The servers announce no version of their own, so
the version column is the installed stylebase package's (the same code 'stylebase up' runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib import metadata

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from shared.backup.settings import BackupSettings
from shared.settings import SERVICES, EndpointSettings, ServiceName
from stylebase.admin.v1 import admin_service_pb2 as admin_pb
from stylebase.admin.v1 import admin_service_pb2_grpc as admin_grpc
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as gateway_grpc

NA = "n/a"
_BACKUP_TIMESTAMP = "backup_last_base_backup_timestamp_seconds"


@dataclass
class Row:
    service: str
    address: str
    health: str
    up: bool
    version: str
    pool: str = NA
    cache_hit_rate: str = NA
    replica_lag: str = NA
    backup_age: str = NA
    reason: str = ""


def _version() -> str:
    try:
        return metadata.version("stylebase")
    except metadata.PackageNotFoundError:
        return NA


def _reason(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


async def _pools(channel: grpc.aio.Channel, wait: float) -> str:
    reply = await admin_grpc.AdminServiceStub(channel).GetPoolStats(
        admin_pb.GetPoolStatsRequest(), timeout=wait
    )
    if not reply.pools:
        return NA
    return ", ".join(
        f"{p.name} {p.checked_out + p.overflow}/{p.size} in use, {p.idle} idle" for p in reply.pools
    )


async def _hit_rate(channel: grpc.aio.Channel, wait: float) -> str:
    stats = await gateway_grpc.CacheGatewayServiceStub(channel).GetCacheStats(
        gateway_pb.GetCacheStatsRequest(), timeout=wait
    )
    return f"{stats.hit_rate:.1%}"


async def _service(service: ServiceName, target: str, wait: float, version: str) -> Row:
    row = Row(service, target, "down", False, version)
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=wait
            )
        except grpc.RpcError as error:
            row.reason = _reason(error)
            return row
        row.health = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        row.up = reply.status == health_pb2.HealthCheckResponse.SERVING
        try:
            row.pool = await _pools(channel, wait)
            if service == "cache_gateway":
                row.cache_hit_rate = await _hit_rate(channel, wait)
        except grpc.RpcError as error:  # health answered: the service is up, the detail not
            row.reason = _reason(error)
    return row


def _http_api(address: str, wait: float, version: str) -> Row:
    """The HTTP API's /readyz: 200 when every gRPC service behind it serves."""
    row = Row("http_api", address, "down", False, version)
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=wait) as response:
            response.read()
        row.health, row.up = "SERVING", True
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        row.health = "NOT_SERVING"
        row.reason = f"HTTP {error.code}: {body[:200]}"
    except OSError as error:
        row.reason = str(getattr(error, "reason", error))
    return row


def _backup_age(settings: BackupSettings, wait: float) -> str:
    """From the backup process's metrics, when one is running; n/a otherwise."""
    if settings.backup_metrics_port == 0:
        return NA
    url = f"http://{settings.backup_metrics_host}:{settings.backup_metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=wait) as response:
            body = response.read().decode()
    except OSError:
        return NA
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == _BACKUP_TIMESTAMP and sample.value > 0:
                hours = (time.time() - sample.value) / 3600
                return f"{hours:.1f} h"
    return NA


async def collect(wait: float) -> list[Row]:
    endpoints = EndpointSettings()
    version = _version()
    rows = list(
        await asyncio.gather(
            *(_service(s, endpoints.target_of(s), wait, version) for s in SERVICES)
        )
    )
    if endpoints.http_api_port != 0:
        address = f"127.0.0.1:{endpoints.http_api_port}"
        rows.append(await asyncio.to_thread(_http_api, address, wait, version))
    age = await asyncio.to_thread(_backup_age, BackupSettings(), wait)
    for row in rows:
        if row.pool != NA:  # the services with a database share its backups
            row.backup_age = age
    return rows


def _table(rows: list[Row]) -> Table:
    table = Table(title="stylebase status")
    for name in ("service", "address", "health", "version", "pool", "cache hit rate"):
        table.add_column(name)
    table.add_column("replica lag")
    table.add_column("backup age")
    for r in rows:
        health = r.health if not r.reason else f"{r.health} ({r.reason})"
        style = "green" if r.up else "red"
        table.add_row(
            r.service,
            r.address,
            f"[{style}]{health}[/{style}]",
            r.version,
            r.pool,
            r.cache_hit_rate,
            r.replica_lag,
            r.backup_age,
        )
    return table


def run(args: argparse.Namespace) -> int:
    rows = asyncio.run(collect(args.timeout))
    if args.json:
        print(json.dumps({"services": [asdict(r) for r in rows]}, indent=2))
    else:
        console = Console()
        if console.is_terminal:
            console.print(_table(rows))
        else:
            for r in rows:
                detail = f" ({r.reason})" if r.reason else ""
                print(
                    f"{r.service}\t{r.address}\t{r.health}{detail}\tversion {r.version}\t"
                    f"pool {r.pool}\tcache hit rate {r.cache_hit_rate}\t"
                    f"replica lag {r.replica_lag}\tbackup age {r.backup_age}"
                )
    down = [r.service for r in rows if not r.up]
    if down:
        print(f"down: {', '.join(down)}", file=sys.stderr)
    return 1 if down else 0
