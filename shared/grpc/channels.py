"""Channels to other Stylebase services: retries in the service config, request ids and
trace context passed on."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from shared.grpc.base import with_metadata
from shared.grpc.interceptors import REQUEST_ID_KEY
from shared.logging import request_id_var
from shared.telemetry import TracingClientInterceptor

# round_robin: a channel keeps a subchannel to every address its target resolves to (every
# pod behind a headless Service) and spreads calls over them; gRPC's default, pick_first,
# sends all of a channel's calls to one pod however many there are.
# Retry only what is safe to retry: the call never reached a server.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


class _RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        request_id = request_id_var.get()
        if request_id:
            client_call_details = with_metadata(client_call_details, [(REQUEST_ID_KEY, request_id)])
        return await continuation(client_call_details, request)


def service_channel(
    target: str, *, retries: bool = True, interceptors: bool = True
) -> grpc.aio.Channel:
    """A channel to a Stylebase service. Without interceptors (a caller on a hot path that
    sends the request id and trace context itself), each call skips grpc.aio's intercepted
    call wrapper, which costs more than the rest of the client side of a small call."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", _SERVICE_CONFIG),
        # Fail fast on a dead peer instead of backing off for up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    chain: list[Any] = [_RequestIdInterceptor(), TracingClientInterceptor()] if interceptors else []
    return grpc.aio.insecure_channel(target, options=options, interceptors=chain or None)
