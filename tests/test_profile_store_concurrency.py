"""Concurrent writers over real gRPC: one artist, one profile, no failures, rising versions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.profile_store_support import Store, count, profile, rpc_error, running_store, unique


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


async def test_50_concurrent_saves_of_a_new_artist_create_one_artist_and_one_profile(
    store: Store,
) -> None:
    name = unique("Concurrent")
    requests = [
        pb.SaveStyleProfileRequest(profile=profile(name, text_description=f"take {i}"))
        for i in range(50)
    ]
    replies = await asyncio.gather(*(store.stub.SaveStyleProfile(r) for r in requests))
    assert len({r.artist.id for r in replies}) == 1
    assert sum(r.artist_created for r in replies) == 1
    versions = [r.profile.version for r in replies]
    assert len(set(versions)) == 50
    assert await count(store.db, "SELECT count(*) FROM artists WHERE name = :n", n=name) == 1
    artist_id = uuid.UUID(replies[0].artist.id)
    profiles_sql = "SELECT count(*) FROM style_profiles WHERE artist_id = :a"
    assert await count(store.db, profiles_sql, a=artist_id) == 1
    # The stored profile is the one whose save got the highest version.
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    newest = max(replies, key=lambda r: r.profile.version)
    assert read.profile == newest.profile


async def test_50_concurrent_get_or_create_calls_return_one_id(store: Store) -> None:
    name = unique("Race")
    replies = await asyncio.gather(
        *(store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name)) for _ in range(50))
    )
    assert len({r.artist.id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1


async def test_overlapping_batches_in_opposite_orders_both_succeed(store: Store) -> None:
    names = [unique("Overlap") for _ in range(200)]
    forward = pb.BatchSaveStyleProfilesRequest(profiles=[profile(n) for n in names])
    backward = pb.BatchSaveStyleProfilesRequest(profiles=[profile(n) for n in reversed(names)])
    replies = await asyncio.gather(
        *(store.stub.BatchSaveStyleProfiles(r) for r in (forward, backward, forward, backward))
    )
    assert sum(r.artists_created for r in replies) == 200
    ids = {s.artist_name: s.artist_id for s in replies[0].saved}
    for reply in replies[1:]:
        assert {s.artist_name: s.artist_id for s in reply.saved} == ids


async def test_saves_racing_a_delete_never_leave_a_version_below_the_tombstone(
    store: Store,
) -> None:
    name = unique("Tombstone")
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    saves = [
        store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
        for _ in range(10)
    ]
    deleting = store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    deleted, *saved = await asyncio.gather(deleting, *saves)
    assert isinstance(deleted, pb.DeleteArtistResponse)
    later = [
        r
        for r in saved
        if isinstance(r, pb.SaveStyleProfileResponse) and r.profile.version > deleted.version
    ]
    request = pb.GetStyleProfileRequest(artist_name=name)
    if later:
        # Saves that ran after the delete re-created the artist above the tombstone.
        read = await store.stub.GetStyleProfile(request)
        assert read.profile.version == max(r.profile.version for r in later)
        assert all(r.artist_created == (r is min(later, key=_version)) for r in later)
    else:
        error = await rpc_error(store.stub.GetStyleProfile(request))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def _version(reply: pb.SaveStyleProfileResponse) -> int:
    return reply.profile.version
