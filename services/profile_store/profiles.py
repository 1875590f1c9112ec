"""SQL for style profiles: set-based upserts for one profile or a thousand, and reads.

Every write is INSERT ... ON CONFLICT (never read-then-write), so concurrent saves of one
artist serialise on its row lock instead of failing; every save takes a fresh value of
style_profile_version_seq after that lock, so versions only ever rise for a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store import vectors
from services.profile_store.validation import ProfileInput
from shared import convert
from stylebase.common.v1 import common_pb2

ARTIST_COLUMNS = (
    "id, name, research_status, last_updated, sources_count, confidence_score, created_at"
)
PROFILE_COLUMNS = (
    "id, artist_id, text_description, quantitative_params, midi_templates_json, embedding,"
    " confidence_score, sources_count, created_at, updated_at, version"
)

# Names are sorted by the caller so two overlapping batches lock artists in one order.
_UPSERT_ARTISTS = text(
    f"""
    INSERT INTO artists (id, name, research_status, confidence_score, sources_count,
                         last_updated, created_at)
    SELECT gen_random_uuid(), u.name, 'cached', u.confidence, u.sources, now(), now()
    FROM unnest(CAST(:names AS text[]), CAST(:confidences AS float8[]),
                CAST(:sources AS int[])) WITH ORDINALITY AS u(name, confidence, sources, n)
    ORDER BY u.n
    ON CONFLICT (name) DO UPDATE
        SET research_status = 'cached', confidence_score = EXCLUDED.confidence_score,
            sources_count = EXCLUDED.sources_count, last_updated = now()
    RETURNING {ARTIST_COLUMNS}, (xmax = 0) AS created
    """
)
_PROFILE_VALUES = """
    SELECT gen_random_uuid(), u.artist_id, u.description, CAST(u.params AS jsonb),
           CAST(u.midi AS jsonb), u.embedding, u.confidence, CAST(u.counts AS jsonb),
           now(), now(), nextval('style_profile_version_seq')
    FROM unnest(CAST(:artist_ids AS uuid[]), CAST(:descriptions AS text[]),
                CAST(:params AS text[]), CAST(:midi AS text[]), CAST(:embeddings AS vector[]),
                CAST(:confidences AS float8[]), CAST(:counts AS text[]))
         WITH ORDINALITY AS u(artist_id, description, params, midi, embedding, confidence,
                              counts, n)
    ORDER BY u.n
"""
_INSERT_PROFILES = f"INSERT INTO style_profiles ({PROFILE_COLUMNS}) {_PROFILE_VALUES}"
_ON_CONFLICT_REPLACE = """
    ON CONFLICT (artist_id) DO UPDATE
        SET text_description = EXCLUDED.text_description,
            quantitative_params = EXCLUDED.quantitative_params,
            midi_templates_json = EXCLUDED.midi_templates_json,
            embedding = EXCLUDED.embedding, confidence_score = EXCLUDED.confidence_score,
            sources_count = EXCLUDED.sources_count, updated_at = now(),
            version = EXCLUDED.version
"""
_UPSERT_PROFILE = text(f"{_INSERT_PROFILES} {_ON_CONFLICT_REPLACE} RETURNING {PROFILE_COLUMNS}")
# A batch needs only the versions back; returning whole rows would double its traffic.
_UPSERT_PROFILES_BRIEF = text(
    f"{_INSERT_PROFILES} {_ON_CONFLICT_REPLACE} RETURNING artist_id, version"
)
# expected_version 0: the profile must not exist yet.
_CREATE_PROFILE = text(
    f"{_INSERT_PROFILES} ON CONFLICT (artist_id) DO NOTHING RETURNING {PROFILE_COLUMNS}"
)
# expected_version N: replace only the profile that still has version N.
_REPLACE_PROFILE = text(
    f"""
    UPDATE style_profiles
    SET text_description = :description, quantitative_params = CAST(:params AS jsonb),
        midi_templates_json = CAST(:midi AS jsonb), embedding = :embedding,
        confidence_score = :confidence, sources_count = CAST(:counts AS jsonb),
        updated_at = now(), version = nextval('style_profile_version_seq')
    WHERE artist_id = :artist_id AND version = :expected
    RETURNING {PROFILE_COLUMNS}
    """
)
# Read through Database.fetch (driver parameters, one round trip): the store's hottest read.
GET_PROFILE = """
    SELECT a.id AS found_artist_id, p.id, p.artist_id, p.text_description,
           p.quantitative_params, p.midi_templates_json, p.embedding, p.confidence_score,
           p.sources_count, p.created_at, p.updated_at, p.version
    FROM artists a LEFT JOIN style_profiles p ON p.artist_id = a.id
    WHERE a.name = $1
"""


@dataclass(frozen=True)
class ArtistRow:
    """An upserted artist and whether this statement created it."""

    proto: common_pb2.Artist
    created: bool


def profile_to_proto(row: Mapping[str, Any], artist_name: str) -> common_pb2.StyleProfile:
    """A profile row (a driver record, or a SQLAlchemy row's _mapping) as its message."""
    embedding = row["embedding"]
    return common_pb2.StyleProfile(
        id=str(row["id"]),
        artist_id=str(row["artist_id"]),
        artist_name=artist_name,
        text_description=row["text_description"],
        quantitative_params=common_pb2.QuantitativeParams(**row["quantitative_params"]),
        midi_templates=list(row["midi_templates_json"] or []),
        embedding=[] if embedding is None else vectors.decode(embedding),
        confidence_score=row["confidence_score"],
        sources_count=common_pb2.SourceCounts(**(row["sources_count"] or {})),
        created_at=convert.timestamp(row["created_at"]),
        updated_at=convert.timestamp(row["updated_at"]),
        version=row["version"],
    )


async def upsert_artists(
    session: AsyncSession, items: Sequence[ProfileInput]
) -> dict[str, ArtistRow]:
    """Create or update the artists of items (status cached), keyed by name."""
    ordered = sorted(items, key=lambda item: item.artist_name)
    rows = await session.execute(
        _UPSERT_ARTISTS,
        {
            "names": [item.artist_name for item in ordered],
            "confidences": [item.confidence_score for item in ordered],
            "sources": [item.sources_total for item in ordered],
        },
    )
    return {row.name: ArtistRow(convert.artist_to_proto(row), row.created) for row in rows}


def _profile_params(
    items: Sequence[ProfileInput], artist_ids: Sequence[str]
) -> dict[str, list[Any]]:
    return {
        "artist_ids": list(artist_ids),
        "descriptions": [item.text_description for item in items],
        "params": [item.params_json for item in items],
        "midi": [item.midi_templates_json for item in items],
        "embeddings": [item.embedding for item in items],
        "confidences": [item.confidence_score for item in items],
        "counts": [item.sources_count_json for item in items],
    }


async def upsert_profile(session: AsyncSession, item: ProfileInput, artist_id: str) -> Row[Any]:
    """Create or replace the artist's profile; the whole stored row comes back."""
    return (await session.execute(_UPSERT_PROFILE, _profile_params([item], [artist_id]))).one()


async def upsert_profiles(
    session: AsyncSession, items: Sequence[ProfileInput], artist_ids: Sequence[str]
) -> dict[str, int]:
    """Create or replace one profile per artist; the new version by artist id."""
    result = await session.execute(_UPSERT_PROFILES_BRIEF, _profile_params(items, artist_ids))
    return {str(row.artist_id): row.version for row in result}


async def create_profile(
    session: AsyncSession, item: ProfileInput, artist_id: str
) -> Row[Any] | None:
    """None when the artist already has a profile."""
    result = await session.execute(_CREATE_PROFILE, _profile_params([item], [artist_id]))
    return result.first()


async def replace_profile(
    session: AsyncSession, item: ProfileInput, artist_id: str, expected: int
) -> Row[Any] | None:
    """None when the stored profile is missing or has another version."""
    result = await session.execute(
        _REPLACE_PROFILE,
        {
            "artist_id": artist_id,
            "expected": expected,
            "description": item.text_description,
            "params": item.params_json,
            "midi": item.midi_templates_json,
            "embedding": item.embedding,
            "confidence": item.confidence_score,
            "counts": item.sources_count_json,
        },
    )
    return result.first()
