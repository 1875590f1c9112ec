"""Artists over real gRPC and PostgreSQL: get-or-create, lookups, pages, status, delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.grpc.status import error_info, field_violations
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.profile_store_support import (
    Store,
    count,
    fresh_store,
    profile,
    rpc_error,
    running_store,
    unique,
)


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


@pytest.fixture
def fresh(store: Store, clean_db: Database) -> Store:
    return fresh_store(store)


async def test_get_or_create_creates_once_and_then_returns_the_same_artist(store: Store) -> None:
    name = unique()
    first = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    again = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    assert first.created and not again.created
    assert first.artist.id == again.artist.id
    assert first.artist.research_status == common_pb2.RESEARCH_STATUS_PENDING
    assert first.artist.created_at.seconds > 0


async def test_names_differing_only_in_outer_whitespace_are_one_artist(store: Store) -> None:
    name = unique()
    padded = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=f"  {name}\t"))
    plain = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    assert padded.artist.name == name
    assert padded.artist.id == plain.artist.id and not plain.created


@pytest.mark.parametrize(
    ("name", "rule"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 256, "at most 255")],
)
async def test_get_or_create_refuses_bad_names(store: Store, name: str, rule: str) -> None:
    error = await rpc_error(store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in str(error.details()) and rule in str(error.details())


async def test_a_name_of_255_characters_after_trimming_is_accepted(store: Store) -> None:
    name = unique("y") + "y" * 240
    name = name[:255]
    reply = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=f" {name} "))
    assert reply.artist.name == name


async def test_get_artist_by_name_and_by_id(store: Store) -> None:
    created = await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=unique()))
    by_name = await store.stub.GetArtist(pb.GetArtistRequest(name=created.artist.name))
    by_id = await store.stub.GetArtist(pb.GetArtistRequest(id=created.artist.id))
    assert by_name.artist == created.artist == by_id.artist


async def test_get_artist_with_a_malformed_uuid_is_invalid_argument(store: Store) -> None:
    error = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest(id="not-a-uuid")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "id"


async def test_get_artist_without_name_or_id_is_invalid_argument(store: Store) -> None:
    error = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_artist_is_not_found_with_reason_artist_not_found(store: Store) -> None:
    error = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest(name="Unknown Artist")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Artist 'Unknown Artist' not found"
    info = error_info(error)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"
    by_id = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest(id=str(uuid.uuid4()))))
    assert by_id.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(by_id)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"


async def _create(store: Store, n: int, prefix: str = "Page") -> list[str]:
    names = [f"{prefix} {i:03d}" for i in range(n)]
    for name in names:
        await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    return names


async def _all_pages(store: Store, **request: object) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        reply = await store.stub.ListArtists(pb.ListArtistsRequest(page_token=token, **request))  # type: ignore[arg-type]
        pages.append([a.name for a in reply.artists])
        token = reply.next_page_token
        if not token:
            return pages


async def test_list_artists_defaults_to_pages_of_20_and_ends_with_an_empty_token(
    fresh: Store,
) -> None:
    names = await _create(fresh, 45)
    pages = await _all_pages(fresh)
    assert [len(p) for p in pages] == [20, 20, 5]
    assert [n for p in pages for n in p] == names


async def test_list_artists_pages_stay_stable_while_rows_are_inserted(fresh: Store) -> None:
    names = await _create(fresh, 10)
    first = await fresh.stub.ListArtists(pb.ListArtistsRequest(page_size=4))
    await _create(fresh, 5, prefix="Inserted")
    seen = [a.name for a in first.artists]
    token = first.next_page_token
    while token:
        reply = await fresh.stub.ListArtists(pb.ListArtistsRequest(page_size=4, page_token=token))
        seen.extend(a.name for a in reply.artists)
        token = reply.next_page_token
    assert seen[:10] == names
    assert len(seen) == len(set(seen)) == 15


async def test_list_artists_filters_by_research_status(fresh: Store) -> None:
    names = await _create(fresh, 6)
    for name in names[::2]:
        await fresh.stub.SetResearchStatus(
            pb.SetResearchStatusRequest(
                artist_name=name, research_status=common_pb2.RESEARCH_STATUS_FAILED
            )
        )
    pages = await _all_pages(fresh, page_size=2, research_status=common_pb2.RESEARCH_STATUS_FAILED)
    assert [n for p in pages for n in p] == names[::2]


@pytest.mark.parametrize("size", [-1, 101])
async def test_list_artists_refuses_page_sizes_out_of_bounds(store: Store, size: int) -> None:
    error = await rpc_error(store.stub.ListArtists(pb.ListArtistsRequest(page_size=size)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error)[0][0] == "page_size"


async def test_list_artists_accepts_page_size_100(fresh: Store) -> None:
    await _create(fresh, 101)
    reply = await fresh.stub.ListArtists(pb.ListArtistsRequest(page_size=100))
    assert len(reply.artists) == 100 and reply.next_page_token


async def test_a_page_token_cannot_be_replayed_with_another_filter(fresh: Store) -> None:
    await _create(fresh, 3)
    reply = await fresh.stub.ListArtists(pb.ListArtistsRequest(page_size=1))
    replay = pb.ListArtistsRequest(
        page_size=1,
        page_token=reply.next_page_token,
        research_status=common_pb2.RESEARCH_STATUS_PENDING,
    )
    error = await rpc_error(fresh.stub.ListArtists(replay))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    garbage = await rpc_error(fresh.stub.ListArtists(pb.ListArtistsRequest(page_token="%%%")))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_set_research_status_updates_the_artist(store: Store) -> None:
    name = unique()
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    reply = await store.stub.SetResearchStatus(
        pb.SetResearchStatusRequest(
            artist_name=name, research_status=common_pb2.RESEARCH_STATUS_RESEARCHING
        )
    )
    assert reply.artist.research_status == common_pb2.RESEARCH_STATUS_RESEARCHING
    read = await store.stub.GetArtist(pb.GetArtistRequest(name=name))
    assert read.artist.research_status == common_pb2.RESEARCH_STATUS_RESEARCHING


async def test_set_research_status_refuses_unspecified_and_unknown_artists(store: Store) -> None:
    name = unique()
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    unspecified = await rpc_error(
        store.stub.SetResearchStatus(pb.SetResearchStatusRequest(artist_name=name))
    )
    assert unspecified.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await rpc_error(
        store.stub.SetResearchStatus(
            pb.SetResearchStatusRequest(
                artist_name=unique("Nobody"), research_status=common_pb2.RESEARCH_STATUS_CACHED
            )
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_artist_removes_profile_and_sources_and_keeps_history(store: Store) -> None:
    name = unique()
    saved = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    for kind in (common_pb2.SOURCE_TYPE_PAPER, common_pb2.SOURCE_TYPE_MIDI):
        await store.stub.AddResearchSource(
            pb.AddResearchSourceRequest(
                artist_name=name, source=common_pb2.ResearchSource(source_type=kind)
            )
        )
    history_id = uuid.uuid4()
    async with store.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO generation_history (id, artist_id, provider_used,"
                " generation_time_ms, user_params) VALUES (:id, :a, 'template', 5, '{}')"
            ),
            {"id": history_id, "a": uuid.UUID(saved.artist.id)},
        )
    reply = await store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    assert reply.artist_id == saved.artist.id
    assert reply.profile_deleted and reply.research_sources_deleted == 2
    assert reply.version > saved.profile.version
    gone = await rpc_error(store.stub.GetArtist(pb.GetArtistRequest(name=name)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    for table in ("style_profiles", "research_sources"):
        sql = f"SELECT count(*) FROM {table} WHERE artist_id = :a"
        assert await count(store.db, sql, a=uuid.UUID(saved.artist.id)) == 0
    kept = "SELECT count(*) FROM generation_history WHERE id = :h AND artist_id IS NULL"
    assert await count(store.db, kept, h=history_id) == 1


async def test_a_recreated_artist_gets_a_version_above_its_deletion(store: Store) -> None:
    name = unique()
    await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    deleted = await store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name=name))
    again = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=profile(name)))
    assert again.artist_created
    assert again.profile.version > deleted.version


async def test_deleting_an_unknown_artist_is_not_found(store: Store) -> None:
    error = await rpc_error(
        store.stub.DeleteArtist(pb.DeleteArtistRequest(artist_name="Unknown Artist"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info is not None and info.reason == "ARTIST_NOT_FOUND"
