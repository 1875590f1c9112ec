"""What the HTTP API reads from the environment: where it listens, whom it calls, its limits."""

from __future__ import annotations

from pydantic import Field

from shared.settings import EndpointSettings, LogSettings, ObservabilitySettings


class Settings(EndpointSettings, LogSettings, ObservabilitySettings):
    # The deadline of a request that sends no X-Request-Timeout; it bounds every gRPC call
    # the request makes.
    http_api_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # The longest X-Request-Timeout honoured; longer asks are refused, not silently capped.
    http_api_max_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Bodies above this are refused with 413 before they are read.
    http_api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Seconds a 503 asks the client to wait (Retry-After).
    http_api_retry_after_seconds: int = Field(default=1, ge=1, le=3600)
