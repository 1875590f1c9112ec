"""The demo dataset: real drummers and producers with team-written profiles and real embeddings.

`stylebase seed-demo` and the first start of `stylebase up` load it through the same
validation and repository code as SaveStyleProfile, so loading it twice changes nothing
but the versions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store import validation
from services.profile_store.app import Settings, connect_database, invalidator
from services.profile_store.repository import ProfileRepository
from stylebase.common.v1 import common_pb2

log = logging.getLogger(__name__)

DEMO = Path(__file__).resolve().parent / "demo"


class DemoDataError(RuntimeError):
    """The committed data does not hold together (e.g. a description changed, vectors not)."""


def description_hash(description: str) -> str:
    return hashlib.sha256(description.encode()).hexdigest()


def load_profiles(directory: Path = DEMO) -> list[common_pb2.StyleProfile]:
    artists: list[dict[str, Any]] = json.loads((directory / "artists.json").read_text())["artists"]
    embeddings = json.loads((directory / "embeddings.json").read_text())["embeddings"]
    profiles = []
    for artist in artists:
        stored = embeddings.get(artist["name"])
        if stored is None or stored["description_sha256"] != description_hash(
            artist["text_description"]
        ):
            raise DemoDataError(
                f"the embedding of {artist['name']!r} is missing or stale; run "
                "scripts/compute_demo_embeddings.py"
            )
        vector = np.frombuffer(base64.b64decode(stored["vector"]), dtype="<f4")
        profiles.append(
            common_pb2.StyleProfile(
                artist_name=artist["name"],
                text_description=artist["text_description"],
                quantitative_params=common_pb2.QuantitativeParams(**artist["quantitative_params"]),
                midi_templates=artist["midi_templates"],
                embedding=vector.tolist(),
                confidence_score=artist["confidence_score"],
                sources_count=common_pb2.SourceCounts(**artist["sources_count"]),
            )
        )
    return profiles


async def load(repository: ProfileRepository) -> int:
    """Save every demo profile; returns how many."""
    items = [validation.profile(p) for p in load_profiles()]
    for item in items:
        await repository.save_profile(item)
    return len(items)


async def _has_artists(session: AsyncSession) -> bool:
    return bool(await session.scalar(text("SELECT EXISTS (SELECT 1 FROM artists)")))


async def seed(settings: Settings, *, only_if_empty: bool, notify_gateway: bool = True) -> int:
    """Load the dataset into the configured database; 0 when skipped because it has artists.

    Without notify_gateway the invalidations wait in the outbox for the store's relay;
    with it, each save runs its invalidation against Redis (when REDIS_URL is set).
    """
    db = connect_database(settings)
    gateway = invalidator(settings, db) if notify_gateway else None
    try:
        if only_if_empty and await db.run(_has_artists):
            return 0
        return await load(ProfileRepository(db, gateway))
    finally:
        if gateway is not None:
            await gateway.close()
        await db.dispose()
