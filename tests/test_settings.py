"""Settings: variable names, the legacy DATABASE_URL, and refusal of nonsense."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import DatabaseSettings, RedisSettings, StackSettings


def test_postgres_database_url_wins_over_legacy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://legacy@h1:5/db")
    monkeypatch.setenv("POSTGRES_DATABASE_URL", "postgresql://new@h2:6/db")
    assert DatabaseSettings().database_url == "postgresql+asyncpg://new@h2:6/db"


def test_legacy_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRES_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5433/style")
    assert DatabaseSettings().database_url == "postgresql+asyncpg://u:p@db.example:5433/style"


def test_unset_database_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTGRES_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = DatabaseSettings()
    assert settings.database_url is None
    with pytest.raises(ValueError, match="POSTGRES_DATABASE_URL is not set"):
        settings.require_database_url()


def test_pool_defaults_match_the_specification() -> None:
    settings = DatabaseSettings()
    assert (settings.db_pool_size, settings.db_max_overflow) == (10, 20)
    assert settings.db_statement_timeout_ms == 30_000
    assert settings.db_pool_pre_ping is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSTGRES_DATABASE_URL", "mysql://root@localhost/x"),
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_STATEMENT_TIMEOUT_MS", "5"),
        ("DB_VECTOR_INDEX", "annoy"),
    ],
)
def test_nonsense_database_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=f"(?i){name}"):
        DatabaseSettings()


def test_redis_url_scheme_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost:6379")
    with pytest.raises(ValidationError, match="redis_url"):
        RedisSettings()


def test_redis_ttl_defaults_to_seven_days() -> None:
    assert RedisSettings().redis_ttl_seconds == 604_800


@pytest.mark.parametrize("variable", ["SIMILARITY_PORT", "HTTP_API_PORT"])
def test_stack_refuses_two_services_on_one_port(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "50051")
    with pytest.raises(ValidationError, match="ports must differ"):
        StackSettings()


def test_default_ports() -> None:
    settings = StackSettings()
    assert [
        settings.port_of(s) for s in ("profile_store", "similarity", "analytics", "cache_gateway")
    ] == [50051, 50052, 50053, 50054]
    assert settings.target_of("profile_store") == "127.0.0.1:50051"
