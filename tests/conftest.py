"""Session-wide real servers: PostgreSQL with pgvector and redis-server, on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db import migrate
from shared.db.engine import Database
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import ServiceSettings, to_asyncpg_url

TABLES = (
    "generation_history",
    "research_sources",
    "style_profiles",
    "artists",
    "profile_invalidation_outbox",
    "generation_rollups",
    "generation_rollup_histogram",
    "artist_generation_counts",
)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    """The URL of the migrated test database (asyncpg form)."""
    url = to_asyncpg_url(postgres.url)
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(database_url: str) -> ServiceSettings:
    return ServiceSettings(POSTGRES_DATABASE_URL=database_url, db_pool_size=5)


@pytest.fixture(scope="session")
async def db(settings: ServiceSettings) -> AsyncIterator[Database]:
    database = Database.connect(settings, application_name="tests")
    yield database
    await database.dispose()


@pytest.fixture
async def clean_db(db: Database) -> Database:
    """Empty tables before each test that asks for it."""
    async with db.transaction() as session:
        await session.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    return db


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
