"""SaveStyleProfile and GetStyleProfile: the save workflow, versions, validation, deadlines."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from shared.embedded.postgres import EmbeddedPostgres
from shared.grpc.status import error_info, field_violations
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.profile_store_support import (
    Store,
    count,
    embedding,
    profile,
    rpc_error,
    running_store,
    unique,
)


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


def _save(message: common_pb2.StyleProfile, **kwargs: Any) -> pb.SaveStyleProfileRequest:
    return pb.SaveStyleProfileRequest(profile=message, **kwargs)


async def test_save_creates_the_artist_and_its_profile_and_marks_it_cached(store: Store) -> None:
    name = unique()
    reply = await store.stub.SaveStyleProfile(_save(profile(name)))
    assert reply.artist_created
    assert reply.artist.name == name
    assert reply.artist.research_status == common_pb2.RESEARCH_STATUS_CACHED
    assert reply.artist.confidence_score == pytest.approx(0.8)
    assert reply.artist.sources_count == 1 + 3 + 5 + 2
    assert reply.profile.artist_id == reply.artist.id
    assert reply.profile.version > 0
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert read.profile == reply.profile


async def test_save_updates_an_existing_artist_set_up_by_get_or_create(store: Store) -> None:
    name = unique()
    created = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    reply = await store.stub.SaveStyleProfile(_save(profile(f" {name} ", confidence_score=0.25)))
    assert not reply.artist_created
    assert reply.artist.id == created.artist.id
    artist = await store.stub.GetArtist(pb.GetArtistRequest(name=name))
    assert artist.artist.confidence_score == 0.25
    assert artist.artist.research_status == common_pb2.RESEARCH_STATUS_CACHED


async def test_every_save_replaces_the_single_profile_and_raises_its_version(store: Store) -> None:
    name = unique()
    first = await store.stub.SaveStyleProfile(_save(profile(name)))
    second = await store.stub.SaveStyleProfile(
        _save(profile(name, text_description="Now with brushes."))
    )
    assert second.profile.version > first.profile.version
    assert second.profile.id == first.profile.id
    assert second.profile.created_at == first.profile.created_at
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert read.profile.text_description == "Now with brushes."
    assert read.profile.version == second.profile.version
    rows = "SELECT count(*) FROM style_profiles WHERE artist_id = CAST(:a AS uuid)"
    assert await count(store.db, rows, a=first.artist.id) == 1


async def test_a_profile_without_an_embedding_is_saved_and_read_back_empty(store: Store) -> None:
    name = unique()
    await store.stub.SaveStyleProfile(_save(profile(name, with_embedding=False)))
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert list(read.profile.embedding) == []


async def test_get_profile_of_unknown_artist_is_artist_not_found(store: Store) -> None:
    error = await rpc_error(
        store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name="Unknown Artist"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Artist 'Unknown Artist' not found"
    info = error_info(error)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"


async def test_get_profile_of_an_artist_without_one_is_profile_not_found(store: Store) -> None:
    name = unique()
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    error = await rpc_error(store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info is not None and info.reason == "PROFILE_NOT_FOUND"


async def test_expected_version_zero_creates_only_a_new_profile(store: Store) -> None:
    name = unique()
    created = await store.stub.SaveStyleProfile(_save(profile(name), expected_version=0))
    error = await rpc_error(store.stub.SaveStyleProfile(_save(profile(name), expected_version=0)))
    assert error.code() == grpc.StatusCode.ABORTED
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert read.profile.version == created.profile.version


async def test_expected_version_mismatch_is_aborted_and_changes_nothing(store: Store) -> None:
    name = unique()
    first = await store.stub.SaveStyleProfile(_save(profile(name)))
    stale = _save(profile(name, confidence_score=0.1), expected_version=first.profile.version - 1)
    error = await rpc_error(store.stub.SaveStyleProfile(stale))
    assert error.code() == grpc.StatusCode.ABORTED
    artist = await store.stub.GetArtist(pb.GetArtistRequest(name=name))
    assert artist.artist.confidence_score == pytest.approx(0.8)
    matching = _save(profile(name, confidence_score=0.1), expected_version=first.profile.version)
    reply = await store.stub.SaveStyleProfile(matching)
    assert reply.profile.version > first.profile.version
    assert reply.profile.confidence_score == pytest.approx(0.1)


async def test_expected_version_for_a_new_artist_is_aborted_without_creating_it(
    store: Store,
) -> None:
    name = unique()
    error = await rpc_error(store.stub.SaveStyleProfile(_save(profile(name), expected_version=7)))
    assert error.code() == grpc.StatusCode.ABORTED
    missing = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest(name=name)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def _params(**values: float) -> dict[str, float]:
    return values


INVALID = [
    ({"embedding": [0.1] * 383}, "profile.embedding", "exactly 384"),
    ({"embedding": [0.0] * 384}, "profile.embedding", "non-zero norm"),
    ({"embedding": [math.nan] + [0.1] * 383}, "profile.embedding[0]", "finite"),
    ({"embedding": [0.1] * 383 + [math.inf]}, "profile.embedding[383]", "finite"),
    ({"confidence_score": 1.5}, "profile.confidence_score", "between 0 and 1"),
    ({"confidence_score": -0.1}, "profile.confidence_score", "between 0 and 1"),
    ({"quantitative_params": _params(tempo_min=0)}, "tempo_min", "positive"),
    ({"quantitative_params": _params(tempo_max=-5)}, "tempo_max", "positive"),
    ({"quantitative_params": _params(tempo_avg=80)}, "tempo_avg", "tempo_min <= tempo_avg"),
    ({"quantitative_params": _params(tempo_avg=120)}, "tempo_avg", "tempo_min <= tempo_avg"),
    ({"quantitative_params": _params(swing_percent=101)}, "swing_percent", "between 0 and 100"),
    ({"quantitative_params": _params(ghost_note_prob=1.2)}, "ghost_note_prob", "between 0"),
    ({"quantitative_params": _params(syncopation_level=-0.5)}, "syncopation_level", "between"),
    ({"quantitative_params": _params(velocity_mean=128)}, "velocity_mean", "between 0 and 127"),
    ({"quantitative_params": _params(velocity_std=-1)}, "velocity_std", "between 0 and 127"),
    ({"quantitative_params": _params(swing_percent=math.nan)}, "swing_percent", "finite"),
    (
        {"sources_count": common_pb2.SourceCounts(papers=-1)},
        "profile.sources_count.papers",
        "not be negative",
    ),
    ({"artist_name": "   "}, "profile.artist_name", "must not be empty"),
    ({"artist_name": "x" * 256}, "profile.artist_name", "at most 255"),
    ({"midi_templates": ["m" * 1025]}, "profile.midi_templates[0]", "at most 1024"),
    ({"text_description": "nul \x00 byte"}, "profile.text_description", "NUL"),
]


@pytest.mark.parametrize(("overrides", "field", "rule"), INVALID)
async def test_invalid_profiles_are_refused_naming_field_and_rule_and_nothing_is_written(
    store: Store, overrides: dict[str, Any], field: str, rule: str
) -> None:
    name = unique("Invalid")
    message = profile(name, **overrides)
    error = await rpc_error(store.stub.SaveStyleProfile(_save(message)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert any(f.endswith(field) and rule in d for f, d in violations), violations
    assert field.split(".")[-1] in str(error.details())
    assert await count(store.db, "SELECT count(*) FROM artists WHERE name = :n", n=name) == 0


async def test_a_profile_without_quantitative_params_is_refused(store: Store) -> None:
    message = profile(unique())
    message.ClearField("quantitative_params")
    error = await rpc_error(store.stub.SaveStyleProfile(_save(message)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "profile.quantitative_params"


async def test_a_negative_expected_version_is_refused(store: Store) -> None:
    error = await rpc_error(
        store.stub.SaveStyleProfile(_save(profile(unique()), expected_version=-1))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_deadline_shorter_than_the_work_is_deadline_exceeded_and_writes_nothing(
    store: Store, postgres: EmbeddedPostgres
) -> None:
    """A transaction elsewhere holds the artist's row, so the save cannot finish in time."""
    name = unique("Locked")
    first = await store.stub.SaveStyleProfile(_save(profile(name)))
    async with store.db.transaction() as blocker:
        await blocker.execute(
            text("SELECT id FROM artists WHERE name = :n FOR UPDATE"), {"n": name}
        )
        error = await rpc_error(
            store.stub.SaveStyleProfile(
                _save(profile(name, text_description="never stored", embedding=embedding(1))),
                timeout=0.3,
            )
        )
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The statement must have given up before the lock is released.
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'profile_store' AND wait_event_type = 'Lock'"
        )
        for _ in range(100):
            if int(postgres.psql(waiting, database="stylebase").strip()) == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the save was still waiting on the lock after its deadline")
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert read.profile.version == first.profile.version
    assert read.profile.text_description != "never stored"
