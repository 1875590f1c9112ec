"""BatchSaveStyleProfiles: up to 1,000 profiles, validated as a whole, written all or nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from shared.grpc.status import field_violations
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

GRPC_DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


def _batch(names: list[str]) -> pb.BatchSaveStyleProfilesRequest:
    return pb.BatchSaveStyleProfilesRequest(
        profiles=[profile(n, embedding=embedding(i)) for i, n in enumerate(names)]
    )


async def _artists_named(store: Store, names: list[str]) -> int:
    return await count(store.db, "SELECT count(*) FROM artists WHERE name = ANY(:n)", n=names)


async def test_a_batch_of_1000_with_embeddings_fits_the_default_message_limit_and_saves(
    store: Store,
) -> None:
    prefix = unique("Bulk")
    names = [f"{prefix} {i:04d}" for i in range(1000)]
    request = _batch(names)
    assert request.ByteSize() < GRPC_DEFAULT_MAX_MESSAGE
    reply = await store.stub.BatchSaveStyleProfiles(request)
    assert [s.artist_name for s in reply.saved] == names
    assert reply.artists_created == 1000
    assert len({s.version for s in reply.saved}) == 1000
    assert await _artists_named(store, names) == 1000
    sample = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=names[417]))
    assert sample.profile.version == reply.saved[417].version
    assert sample.profile.artist_id == reply.saved[417].artist_id
    assert list(sample.profile.embedding) == pytest.approx(embedding(417), abs=1e-7)


async def test_a_batch_replaces_existing_profiles_and_creates_only_new_artists(
    store: Store,
) -> None:
    old, new = unique("Old"), unique("New")
    first = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(old)))
    request = pb.BatchSaveStyleProfilesRequest(
        profiles=[profile(f"  {old} ", confidence_score=0.3), profile(new, with_embedding=False)]
    )
    reply = await store.stub.BatchSaveStyleProfiles(request)
    assert reply.artists_created == 1
    assert reply.saved[0].artist_name == old
    assert reply.saved[0].artist_id == first.artist.id
    assert reply.saved[0].version > first.profile.version
    artist = await store.stub.GetArtist(pb.GetArtistRequest(name=old))
    assert artist.artist.confidence_score == 0.3
    assert artist.artist.research_status == common_pb2.RESEARCH_STATUS_CACHED


async def test_one_bad_item_refuses_the_batch_naming_its_index_and_field_and_writes_nothing(
    store: Store,
) -> None:
    names = [unique("Batch") for _ in range(50)]
    request = _batch(names)
    request.profiles[37].quantitative_params.ghost_note_prob = 1.5
    error = await rpc_error(store.stub.BatchSaveStyleProfiles(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "profiles[37].quantitative_params.ghost_note_prob" in str(error.details())
    fields = [f for f, _ in field_violations(error)]
    assert fields == ["profiles[37].quantitative_params.ghost_note_prob"]
    assert await _artists_named(store, names) == 0


async def test_a_batch_with_the_same_artist_twice_is_refused(store: Store) -> None:
    name = unique("Twice")
    request = pb.BatchSaveStyleProfilesRequest(profiles=[profile(name), profile(f" {name}")])
    error = await rpc_error(store.stub.BatchSaveStyleProfiles(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "profiles[1].artist_name"
    assert await _artists_named(store, [name]) == 0


@pytest.mark.parametrize("size", [0, 1001])
async def test_batches_outside_1_to_1000_are_refused(store: Store, size: int) -> None:
    prefix = unique("Size")
    request = pb.BatchSaveStyleProfilesRequest(
        profiles=[profile(f"{prefix} {i}", with_embedding=False) for i in range(size)]
    )
    error = await rpc_error(store.stub.BatchSaveStyleProfiles(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "profiles"
