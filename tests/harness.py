"""Real servers for tests and benchmarks: embedded PostgreSQL, redis-server, service processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.embedded.ports import free_port
from shared.settings import to_asyncpg_url

ROOT = Path(__file__).resolve().parent.parent


def wait_serving(
    target: str,
    *,
    timeout: float = 30.0,
    service: str = "",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process for {target} exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} did not report SERVING within {timeout} s")


@dataclass
class ServiceProcess:
    """One service run as its own process, as 'stylebase up' runs it."""

    service: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        env = {**os.environ, **self.env, f"{self.service.upper()}_PORT": str(self.port)}
        env.setdefault("LOG_LEVEL", "WARNING")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        wait_serving(self.target, timeout=timeout, process=self.process)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def service_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"POSTGRES_DATABASE_URL": to_asyncpg_url(database_url), "GRPC_GRACE_SECONDS": "1"}
    env.update(extra or {})
    return env
