"""The HTTP API as deployed: the four gRPC services and http_api, each its own process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.faults.proxy import FaultProxy
from tests.harness import ServiceProcess

GRPC_SERVICES = ("profile_store", "similarity", "analytics", "cache_gateway")


def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"http_api exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} was not ready within {timeout} s")


@dataclass
class ApiProcess(ServiceProcess):
    """http_api run as its own process; ready when /readyz answers 200."""

    service: str = "http_api"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        wait_ready(self.base_url, self.process, timeout)


@dataclass
class Stack:
    services: dict[str, ServiceProcess]
    api: ApiProcess
    # Between the API and each service: where the tests cut, refuse or stall its calls.
    proxies: dict[str, FaultProxy] = field(default_factory=dict)

    def stop(self) -> None:
        self.api.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        for service in self.services.values():
            service.stop()


def targets(services: Mapping[str, ServiceProcess]) -> dict[str, str]:
    return {f"{name.upper()}_TARGET": s.target for name, s in services.items()}


def start_services(env: dict[str, str], logs: Path) -> dict[str, ServiceProcess]:
    services: dict[str, ServiceProcess] = {}
    try:
        for name in GRPC_SERVICES:
            extra = targets(services)  # the gateway dials the store started before it
            services[name] = ServiceProcess(
                name, {**env, **extra}, log_path=logs / f"{name}.log"
            ).start()
    except BaseException:
        for service in services.values():
            service.stop()
        raise
    return services


def start_api(env: dict[str, str], upstream: dict[str, str], logs: Path) -> ApiProcess:
    return ApiProcess(env={**env, **upstream}, log_path=logs / "http_api.log").start()
