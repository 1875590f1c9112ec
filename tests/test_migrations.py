"""The initial migration on a real PostgreSQL with pgvector: up, down, up, the live schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres

INITIAL = "a86af6571aac"
T = TypeVar("T")


@pytest.fixture(scope="module")
def scratch_url(postgres: EmbeddedPostgres) -> str:
    """A database of its own, so downgrades never disturb the other tests."""
    postgres.psql("DROP DATABASE IF EXISTS migration_scratch")
    postgres.psql("CREATE DATABASE migration_scratch")
    return postgres.url.rsplit("/", 1)[0] + "/migration_scratch"


@pytest.fixture(scope="module")
async def engine(scratch_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(scratch_url.replace("postgresql://", "postgresql+asyncpg://"))
    yield engine
    await engine.dispose()


async def _sync(engine: AsyncEngine, fn: Callable[[Connection], T]) -> T:
    """Run a synchronous inspection on an async connection."""
    async with engine.connect() as conn:
        return await conn.run_sync(fn)


async def _tables(engine: AsyncEngine) -> set[str]:
    return await _sync(engine, lambda c: set(inspect(c).get_table_names()))


async def _upgrade(url: str, revision: str = "head") -> None:
    # Alembic's env runs its own event loop; keep it off the test's loop.
    await asyncio.to_thread(migrate.upgrade, url, revision)


async def test_upgrade_downgrade_upgrade(scratch_url: str, engine: AsyncEngine) -> None:
    await _upgrade(scratch_url, INITIAL)
    tables = {"artists", "style_profiles", "research_sources", "generation_history"}
    assert tables <= await _tables(engine)
    await asyncio.to_thread(migrate.downgrade, scratch_url, "base")
    assert await _tables(engine) <= {"alembic_version"}
    async with engine.connect() as conn:
        assert (
            await conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'"))
            == 0
        )
        assert await conn.scalar(text("SELECT count(*) FROM pg_class WHERE relkind = 'S'")) == 0
    await _upgrade(scratch_url)
    assert tables <= await _tables(engine)


EXPECTED_COLUMNS = {
    "artists": {
        "id": ("UUID", False),
        "name": ("VARCHAR(255)", False),
        "research_status": ("VARCHAR(20)", False),
        "last_updated": ("TIMESTAMP", False),
        "sources_count": ("INTEGER", False),
        "confidence_score": ("DOUBLE PRECISION", False),
        "created_at": ("TIMESTAMP", False),
    },
    "style_profiles": {
        "id": ("UUID", False),
        "artist_id": ("UUID", False),
        "text_description": ("TEXT", False),
        "quantitative_params": ("JSONB", False),
        "midi_templates_json": ("JSONB", True),
        "embedding": ("VECTOR(384)", True),
        "confidence_score": ("DOUBLE PRECISION", False),
        "sources_count": ("JSONB", True),
        "created_at": ("TIMESTAMP", False),
        "updated_at": ("TIMESTAMP", False),
        "version": ("BIGINT", False),
    },
    "research_sources": {
        "id": ("UUID", False),
        "artist_id": ("UUID", False),
        "source_type": ("VARCHAR(20)", False),
        "url": ("VARCHAR(2048)", True),
        "file_path": ("VARCHAR(1024)", True),
        "raw_content": ("TEXT", True),
        "extracted_data": ("JSONB", True),
        "confidence": ("DOUBLE PRECISION", False),
        "collected_at": ("TIMESTAMP", False),
    },
    "generation_history": {
        "id": ("UUID", False),
        "artist_id": ("UUID", True),
        "provider_used": ("VARCHAR(50)", False),
        "generation_time_ms": ("INTEGER", False),
        "tokens_used": ("BIGINT", True),
        "cost_usd": ("DOUBLE PRECISION", True),
        "user_params": ("JSONB", False),
        "output_files": ("JSONB", True),
        "created_at": ("TIMESTAMP", False),
    },
}


@pytest.mark.parametrize("table", sorted(EXPECTED_COLUMNS))
async def test_live_schema_has_every_column(
    scratch_url: str, engine: AsyncEngine, table: str
) -> None:
    await _upgrade(scratch_url)
    columns = await _sync(
        engine, lambda c: {col["name"]: col for col in inspect(c).get_columns(table)}
    )
    for name, (type_name, nullable) in EXPECTED_COLUMNS[table].items():
        assert name in columns, f"{table}.{name} missing"
        assert str(columns[name]["type"]).upper().startswith(type_name), (
            table,
            name,
            columns[name],
        )
        assert columns[name]["nullable"] is nullable, (table, name)


def _schema_facts(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    return {
        "artist_indexes": {i["name"]: i for i in insp.get_indexes("artists")},
        "profile_uniques": [
            u["column_names"] for u in insp.get_unique_constraints("style_profiles")
        ],
        "profile_fks": insp.get_foreign_keys("style_profiles"),
        "source_fks": insp.get_foreign_keys("research_sources"),
        "source_indexes": {
            i["name"]: i["column_names"] for i in insp.get_indexes("research_sources")
        },
        "history_fks": insp.get_foreign_keys("generation_history"),
        "history_indexes": {
            i["name"]: i["column_names"] for i in insp.get_indexes("generation_history")
        },
        "artist_checks": {c["name"] for c in insp.get_check_constraints("artists")},
        "source_checks": {c["name"] for c in insp.get_check_constraints("research_sources")},
        "artist_defaults": {c["name"]: c["default"] for c in insp.get_columns("artists")},
        "source_defaults": {c["name"]: c["default"] for c in insp.get_columns("research_sources")},
    }


async def test_live_schema_constraints_and_indexes(scratch_url: str, engine: AsyncEngine) -> None:
    await _upgrade(scratch_url)
    facts = await _sync(engine, _schema_facts)
    assert facts["artist_indexes"]["ix_artists_name"]["unique"]
    assert facts["artist_indexes"]["ix_artists_name"]["column_names"] == ["name"]
    assert facts["profile_uniques"] == [["artist_id"]]
    assert facts["profile_fks"][0]["referred_table"] == "artists"
    assert facts["profile_fks"][0]["options"].get("ondelete") == "CASCADE"
    assert facts["source_fks"][0]["options"].get("ondelete") == "CASCADE"
    assert facts["source_indexes"]["ix_research_sources_artist_source_type"] == [
        "artist_id",
        "source_type",
    ]
    assert facts["history_fks"][0]["options"].get("ondelete") == "SET NULL"
    assert facts["history_indexes"]["ix_generation_history_created_at"] == ["created_at"]
    assert {"ck_artists_research_status", "ck_artists_confidence_score"} <= facts["artist_checks"]
    assert "ck_research_sources_source_type" in facts["source_checks"]
    assert "pending" in facts["artist_defaults"]["research_status"]
    assert facts["artist_defaults"]["sources_count"] == "0"
    assert facts["source_defaults"]["confidence"] == "0.5"
    async with engine.connect() as conn:
        index_def = await conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_style_profiles_embedding'")
        )
    assert "USING hnsw (embedding vector_cosine_ops)" in index_def


async def test_delete_cascades_to_profile_and_sources_and_unsets_history(
    scratch_url: str, engine: AsyncEngine
) -> None:
    await _upgrade(scratch_url)
    artist_id, history_id = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO artists (id, name) VALUES (:id, 'Cascade Test')"), {"id": artist_id}
        )
        await conn.execute(
            text(
                "INSERT INTO style_profiles (id, artist_id, text_description, quantitative_params,"
                " confidence_score) VALUES (gen_random_uuid(), :a, 'd', '{}', 0.5)"
            ),
            {"a": artist_id},
        )
        await conn.execute(
            text(
                "INSERT INTO research_sources (id, artist_id, source_type)"
                " VALUES (gen_random_uuid(), :a, 'paper')"
            ),
            {"a": artist_id},
        )
        await conn.execute(
            text(
                "INSERT INTO generation_history (id, artist_id, provider_used, generation_time_ms,"
                " user_params) VALUES (:id, :a, 'template', 10, '{}')"
            ),
            {"id": history_id, "a": artist_id},
        )
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM artists WHERE id = :a"), {"a": artist_id})
    async with engine.connect() as conn:
        for table in ("style_profiles", "research_sources"):
            count = await conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE artist_id = :a"), {"a": artist_id}
            )
            assert count == 0, table
        kept = await conn.execute(
            text("SELECT artist_id FROM generation_history WHERE id = :h"), {"h": history_id}
        )
        assert kept.one().artist_id is None


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO artists (id, name) VALUES (gen_random_uuid(), ' Padded ')",
        "INSERT INTO artists (id, name, research_status) VALUES (gen_random_uuid(), 'X', 'done')",
        "INSERT INTO research_sources (id, artist_id, source_type)"
        " VALUES (gen_random_uuid(), gen_random_uuid(), 'video')",
    ],
)
async def test_schema_refuses_rows_that_break_its_rules(
    scratch_url: str, engine: AsyncEngine, sql: str
) -> None:
    await _upgrade(scratch_url)
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text(sql))


def test_migrations_have_a_single_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused/db"))
    assert len(script.get_heads()) == 1, script.get_heads()
