"""Typed settings read from the environment; field names are the variable names."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["profile_store", "similarity", "analytics", "cache_gateway"]
SERVICES: tuple[ServiceName, ...] = ("profile_store", "similarity", "analytics", "cache_gateway")
DEFAULT_PORTS: dict[str, int] = {
    "profile_store": 50051,
    "similarity": 50052,
    "analytics": 50053,
    "cache_gateway": 50054,
}
# Where each service serves Prometheus metrics over HTTP.
DEFAULT_METRICS_PORTS: dict[str, int] = {
    "profile_store": 9101,
    "similarity": 9102,
    "analytics": 9103,
    "cache_gateway": 9104,
}
DEFAULT_HTTP_API_PORT = 8080
TRACE_EXPORTERS = ("none", "console", "otlp", "file")


def to_asyncpg_url(url: str) -> str:
    """Accept the usual PostgreSQL URL spellings and return SQLAlchemy's asyncpg form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("must be a PostgreSQL URL (postgresql://user@host:port/db)")


def to_libpq_url(url: str) -> str:
    """The plain postgresql:// form, for asyncpg.connect and command-line tools."""
    return "postgresql://" + url.split("://", 1)[1]


class _Base(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class DatabaseSettings(_Base):
    """Connection and pool settings; one pool per process."""

    # POSTGRES_DATABASE_URL wins; the legacy DATABASE_URL is honoured.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("POSTGRES_DATABASE_URL", "DATABASE_URL")
    )
    # Read-only role, used by read paths that can use it when set.
    readonly_database_url: str | None = Field(
        default=None, validation_alias="POSTGRES_READONLY_DATABASE_URL"
    )
    db_pool_size: int = Field(default=10, ge=1, le=500)
    db_max_overflow: int = Field(default=20, ge=0, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    db_pool_pre_ping: bool = True
    # Connections idle at least this long answer a network ping before reuse; fresher ones
    # are only checked locally (see shared.db.pool.install_pre_ping).
    db_pool_ping_idle_seconds: float = Field(default=10.0, ge=0, le=3600)
    db_statement_timeout_ms: int = Field(default=30_000, ge=100, le=3_600_000)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Vector index the migrations build on style_profiles.embedding.
    db_vector_index: Literal["hnsw", "ivfflat"] = "hnsw"
    # Statements slower than this are logged with their EXPLAIN plan; 0 logs every one.
    db_slow_query_ms: int = Field(default=500, ge=0, le=3_600_000)

    @field_validator("database_url", "readonly_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return to_asyncpg_url(value)

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ValueError(
                "POSTGRES_DATABASE_URL is not set; 'stylebase up' sets it for the services "
                "it starts"
            )
        return self.database_url


class EndpointSettings(_Base):
    """Where each service listens and how the others reach it."""

    grpc_host: str = "127.0.0.1"
    profile_store_port: int = Field(default=DEFAULT_PORTS["profile_store"], ge=0, le=65535)
    similarity_port: int = Field(default=DEFAULT_PORTS["similarity"], ge=0, le=65535)
    analytics_port: int = Field(default=DEFAULT_PORTS["analytics"], ge=0, le=65535)
    cache_gateway_port: int = Field(default=DEFAULT_PORTS["cache_gateway"], ge=0, le=65535)
    # The HTTP/JSON API (an HTTP server, not gRPC); 0 leaves it out of 'stylebase up'.
    http_api_port: int = Field(default=DEFAULT_HTTP_API_PORT, ge=0, le=65535)
    # host:port the other services dial; empty means 127.0.0.1 and the port above.
    profile_store_target: str = ""
    similarity_target: str = ""
    analytics_target: str = ""
    cache_gateway_target: str = ""
    grpc_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    # Connections older than this are asked to reconnect (0: never); see server_options.
    grpc_max_connection_age_seconds: float = Field(default=300.0, ge=0, le=86400)

    def port_of(self, service: ServiceName) -> int:
        port: int = getattr(self, f"{service}_port")
        return port

    def target_of(self, service: ServiceName) -> str:
        explicit: str = getattr(self, f"{service}_target")
        return explicit or f"127.0.0.1:{self.port_of(service)}"


class LogSettings(_Base):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # One line per RPC (gRPC services) or request (HTTP API), whatever LOG_LEVEL says.
    access_log: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class CommandLogSettings(LogSettings):
    """The stylebase command (migrate, up, seed-demo, backups): text by default, for a person
    at a terminal; a Job or a log collector sets LOG_FORMAT=json."""

    log_format: Literal["json", "text"] = "text"


class ObservabilitySettings(_Base):
    """Metrics ports and trace export; the OTEL_* names are OpenTelemetry's standard ones."""

    # 0 turns a service's metrics endpoint off.
    profile_store_metrics_port: int = Field(
        default=DEFAULT_METRICS_PORTS["profile_store"], ge=0, le=65535
    )
    similarity_metrics_port: int = Field(
        default=DEFAULT_METRICS_PORTS["similarity"], ge=0, le=65535
    )
    analytics_metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["analytics"], ge=0, le=65535)
    cache_gateway_metrics_port: int = Field(
        default=DEFAULT_METRICS_PORTS["cache_gateway"], ge=0, le=65535
    )
    # Comma-separated: none, console, otlp (OTEL_EXPORTER_OTLP_* configure it), file.
    otel_traces_exporter: str = "none"
    # Empty: the service's own name.
    otel_service_name: str = ""
    # Empty: the OTLP exporter's default (localhost:4317).
    otel_exporter_otlp_endpoint: str = ""
    # Where the file exporter appends spans, one JSON object a line.
    stylebase_traces_file: str = ""

    @field_validator("otel_traces_exporter")
    @classmethod
    def _exporters(cls, value: str) -> str:
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in TRACE_EXPORTERS]
        if unknown:
            raise ValueError(f"unknown exporter {unknown[0]!r}; use {', '.join(TRACE_EXPORTERS)}")
        return ",".join(names) or "none"

    @model_validator(mode="after")
    def _file_needs_path(self) -> ObservabilitySettings:
        if "file" in self.trace_exporters() and not self.stylebase_traces_file:
            raise ValueError("OTEL_TRACES_EXPORTER=file needs STYLEBASE_TRACES_FILE")
        return self

    def trace_exporters(self) -> list[str]:
        return [name for name in self.otel_traces_exporter.split(",") if name != "none"]

    def metrics_port_of(self, service: ServiceName) -> int:
        port: int = getattr(self, f"{service}_metrics_port")
        return port


class ServiceSettings(DatabaseSettings, EndpointSettings, LogSettings, ObservabilitySettings):
    """What every service process reads; each service extends it."""


class RedisSettings(_Base):
    """Redis as the profile store and the cache gateways share it: one key layout, one clock."""

    # Unset: no Redis. The store then invalidates nothing and the gateways keep in-process
    # copies for CACHE_DEGRADED_TTL_SECONDS only.
    redis_url: str | None = None
    # REDIS_URL names one node of a Redis Cluster; the others are discovered.
    redis_cluster: bool = False
    # Where to reach cluster nodes that announce addresses this process cannot use (NAT, a
    # proxy): "announced-host:port=reachable-host:port,..."; empty: as announced.
    redis_cluster_address_map: str = ""
    # TTL of cached entries; markers carry none (under volatile-lru they are never evicted).
    redis_ttl_seconds: int = Field(default=604_800, ge=1)
    # Braces would move the keys' hash tags (every key of an artist shares one slot).
    redis_key_prefix: str = Field(
        default="stylebase:cg", min_length=1, max_length=64, pattern=r"^[^{}]+$"
    )
    # Connect and socket timeout of every Redis call: the longest a request waits on Redis.
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    # How often a gateway registers itself and checks its subscription with a ping.
    redis_health_interval_seconds: float = Field(default=0.25, gt=0, le=60)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_cluster_address_map")
    @classmethod
    def _address_map(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            announced, _, reachable = pair.partition("=")
            for address in (announced, reachable):
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"{pair!r} is not host:port=host:port")
        return value

    def redis_cluster_addresses(self) -> dict[tuple[str, int], tuple[str, int]]:
        def address(text: str) -> tuple[str, int]:
            host, _, port = text.strip().rpartition(":")
            return host, int(port)

        pairs = [p.partition("=") for p in self.redis_cluster_address_map.split(",") if p.strip()]
        return {address(a): address(b) for a, _, b in pairs}

    @property
    def redis_detect_seconds(self) -> float:
        """A gateway whose last ping came back longer ago than this serves in degraded mode."""
        return 2 * self.redis_health_interval_seconds + self.redis_timeout_seconds

    @property
    def redis_live_seconds(self) -> float:
        """The store waits for the acknowledgement of gateways heard within this window.

        Longer than redis_detect_seconds: a gateway the store stops waiting for has already
        stopped trusting its in-process copies."""
        return 4 * self.redis_health_interval_seconds + 2 * self.redis_timeout_seconds


class StackSettings(DatabaseSettings, EndpointSettings, LogSettings, RedisSettings):
    """What 'stylebase up' reads: the embedded defaults and the ports to give out."""

    stylebase_data_dir: str = ".stylebase"
    # Port of the embedded PostgreSQL; 0 picks a free one.
    embedded_postgres_port: int = Field(default=0, ge=0, le=65535)
    stylebase_seed_demo: bool = True

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        ports = [p for p in (*map(self.port_of, SERVICES), self.http_api_port) if p != 0]
        if len(ports) != len(set(ports)):
            raise ValueError("the service ports must differ (the four gRPC ones and HTTP_API_PORT)")
        return self
