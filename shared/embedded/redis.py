"""A redis-server (Debian's, from PATH) on a free loopback port, and a 3-master Redis Cluster
of them, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from shared.embedded.ports import RESERVED, free_port, port_in_use

# Entries carry a TTL and markers do not: under volatile-lru Redis evicts copies, never markers.
EVICTION_POLICY = "volatile-lru"
CLUSTER_BUS_OFFSET = 10_000


def _command(port: int, command: bytes, timeout: float = 0.5) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(command)
            return sock.recv(4096)
    except OSError:
        return b""


class RedisServer:
    def __init__(
        self, workdir: Path, port: int = 0, *, extra_args: list[str] | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; 'make install' installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                EVICTION_POLICY,
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ping():
                return self.url
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _ping(self) -> bool:
        return _command(self.port, b"PING\r\n").startswith(b"+PONG")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus < 65536 and bus not in RESERVED and not port_in_use(bus):
            return port


class RedisCluster:
    """Three masters, no replicas, slots spread by redis-cli --cluster create."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                _cluster_port(),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            for i in range(masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """Any node is a seed: the client discovers the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> str:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH; 'make install' installs it")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
        return self._wait_ok(timeout)

    def restart(self, timeout: float = 30.0) -> str:
        """Start the stopped nodes again: each reloads its nodes.conf (the slot map) but no
        data, as a cluster without persistence does after losing every node."""
        for node in self.nodes:
            node.start()
        return self._wait_ok(timeout)

    def _wait_ok(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(b"cluster_state:ok" in _command(p, b"CLUSTER INFO\r\n") for p in self.ports):
                return self.url
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
