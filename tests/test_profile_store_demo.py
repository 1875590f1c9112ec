"""The demo dataset: real artists, vectors computed from the current descriptions, seed-demo."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import text

from services.profile_store import validation
from services.profile_store.app import Settings
from services.profile_store.seed import load_profiles, seed
from shared.db.engine import Database
from stylebase.common.v1 import common_pb2
from tests.profile_store_support import count

REQUIRED = {"J Dilla", "Questlove", "John Bonham", "Travis Barker", "Clyde Stubblefield"}
DILLA_KIN = {"Questlove", "Karriem Riggins", "Madlib", "Chris Dave", "Knxwledge", "Pete Rock"}
FAR_FROM_DILLA = {"Dave Lombardo", "Lars Ulrich", "Mike Portnoy", "Buddy Rich", "Keith Moon"}


@pytest.fixture(scope="module")
def demo() -> list[common_pb2.StyleProfile]:
    return load_profiles()


def test_the_demo_set_holds_at_least_50_real_artists_that_pass_validation(
    demo: list[common_pb2.StyleProfile],
) -> None:
    names = [p.artist_name for p in demo]
    assert len(names) >= 50 and len(set(names)) == len(names)
    assert set(names) >= REQUIRED
    validation.profiles(demo)


def test_every_demo_embedding_is_a_unit_384_vector(demo: list[common_pb2.StyleProfile]) -> None:
    vectors = np.asarray([list(p.embedding) for p in demo])
    assert vectors.shape == (len(demo), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Distinct descriptions give distinct vectors: none was copied or left at a default.
    assert len({v.tobytes() for v in vectors}) == len(demo)


def test_j_dillas_nearest_neighbours_by_cosine_are_his_musical_kin(
    demo: list[common_pb2.StyleProfile],
) -> None:
    names = [p.artist_name for p in demo]
    vectors = np.asarray([list(p.embedding) for p in demo])
    scores = vectors @ vectors[names.index("J Dilla")]
    nearest = [names[i] for i in np.argsort(-scores)[1:6]]
    assert len(DILLA_KIN & set(nearest)) >= 3, nearest
    assert not FAR_FROM_DILLA & set(nearest), nearest


async def test_seed_demo_loads_the_set_once_and_again_without_duplicates(
    database_url: str, db: Database, demo: list[common_pb2.StyleProfile]
) -> None:
    names = [p.artist_name for p in demo]
    env = {"POSTGRES_DATABASE_URL": database_url, "CACHE_GATEWAY_TARGET": "127.0.0.1:1"}
    for _ in range(2):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shared.cli", "seed-demo"],
            env={**_base_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        sql = "SELECT count(*) FROM artists WHERE name = ANY(:n) AND research_status = 'cached'"
        assert await count(db, sql, n=names) == len(names)
    profiles = "SELECT count(*) FROM style_profiles p JOIN artists a ON a.id = p.artist_id"
    assert await count(db, profiles + " WHERE a.name = ANY(:n)", n=names) == len(names)
    # Read back through pgvector: the stored vectors keep J Dilla's neighbourhood.
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT a.name FROM style_profiles p JOIN artists a ON a.id = p.artist_id"
                " WHERE a.name = ANY(:n) AND a.name <> 'J Dilla'"
                " ORDER BY p.embedding <=> (SELECT p2.embedding FROM style_profiles p2"
                "   JOIN artists a2 ON a2.id = p2.artist_id WHERE a2.name = 'J Dilla')"
                " LIMIT 5"
            ),
            {"n": names},
        )
        nearest = {r.name for r in rows}
    assert len(DILLA_KIN & nearest) >= 3, nearest


async def test_first_start_seeding_skips_a_database_that_already_has_artists(
    database_url: str, clean_db: Database
) -> None:
    settings = Settings(POSTGRES_DATABASE_URL=database_url)
    first = await seed(settings, only_if_empty=True, notify_gateway=False)
    assert first >= 50
    assert await seed(settings, only_if_empty=True, notify_gateway=False) == 0
    assert await count(clean_db, "SELECT count(*) FROM artists") == first
    # The invalidations wait in the outbox for the store's relay.
    assert await count(clean_db, "SELECT count(*) FROM profile_invalidation_outbox") == first


def _base_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "POSTGRES_DATABASE_URL", "CACHE_GATEWAY_TARGET")
    }
