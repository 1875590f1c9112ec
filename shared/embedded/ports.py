"""Free-port lookup and in-use checks on loopback."""

from __future__ import annotations

import socket

# Ports of the machine's own servers; never handed out even if they look free.
RESERVED = {5432, 6379, 3306, 5672, 1883, 4222}
# The probe socket is closed before the port is used, so the kernel may offer the same port to
# the next call; several ports drawn together (a stack's four services) must still differ.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED and port not in _handed_out:
            _handed_out.add(port)
            return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
