"""What every Stylebase client channel is given: the service config (retries, round_robin),
per-method default deadlines, keep-alive, and TLS."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import grpc

REQUEST_ID_KEY = "x-request-id"
HEALTH_SERVICE = "grpc.health.v1.Health"


class Kind(Enum):
    """How an RPC may be retried and how long it is given by default."""

    # Reads, and calls that leave the same state however often they run: retried on
    # UNAVAILABLE by the channel.
    READ = "read"
    # MeasureRecall runs exact search over a sample, WarmCache loads many profiles.
    LONG_READ = "long read"
    # Writes: never retried by the channel, since an UNAVAILABLE may come after the commit.
    # Send the proto's request_id and retry the call yourself: the repeat is answered from
    # the first call's record.
    WRITE = "write"
    BATCH_WRITE = "batch write"

    @property
    def retried(self) -> bool:
        return self in (Kind.READ, Kind.LONG_READ)

    @property
    def timeout(self) -> float:
        """The call's deadline in seconds when the caller gives none."""
        return DEFAULT_TIMEOUTS[self]


DEFAULT_TIMEOUTS = {Kind.READ: 5.0, Kind.LONG_READ: 60.0, Kind.WRITE: 10.0, Kind.BATCH_WRITE: 30.0}

# Stylebase's own rule for its service-to-service channels (shared/grpc/channels.py):
# UNAVAILABLE only, 3 attempts, backoff 0.05 s doubling to at most 0.5 s.
RETRY_POLICY: Mapping[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

# As Stylebase's own channels: a dead peer is noticed within seconds, not minutes.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.enable_retries", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def service_config(service: str, methods: Mapping[str, Kind]) -> str:
    """The JSON service config of a channel to `service` (its full proto name): round_robin
    over every address a target resolves to (so dns:///host:port spreads over replicas) and
    the retry policy on its idempotent methods and the health check."""
    retried = [
        {"service": service, "method": name} for name, kind in methods.items() if kind.retried
    ]
    retried.append({"service": HEALTH_SERVICE, "method": "Check"})
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": retried, "retryPolicy": dict(RETRY_POLICY)}],
        }
    )


@dataclass(frozen=True)
class Tls:
    """TLS for a channel: the CA that signed the server's certificate (None: the system's
    roots) and, for mutual TLS, this client's certificate chain and private key (PEM)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    # The name to check the server's certificate against, when the target is an address.
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both the certificate chain and the private key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def channel_options(
    service: str,
    methods: Mapping[str, Kind],
    tls: Tls | None,
    extra: Sequence[tuple[str, Any]],
) -> list[tuple[str, Any]]:
    options = [*CHANNEL_OPTIONS, ("grpc.service_config", service_config(service, methods))]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    merged = dict(options)
    merged.update(extra)  # a caller's options replace the defaults
    return list(merged.items())
