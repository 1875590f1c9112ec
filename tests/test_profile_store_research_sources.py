"""AddResearchSource and ListResearchSources: defaults, newest first, filters, pages, rules."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from shared.grpc.status import error_info, field_violations
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.profile_store_support import Store, rpc_error, running_store, unique

PAPER = common_pb2.SOURCE_TYPE_PAPER
AUDIO = common_pb2.SOURCE_TYPE_AUDIO


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


async def _artist(store: Store) -> str:
    name = unique("Researched")
    await store.stub.GetOrCreateArtist(pb.GetOrCreateArtistRequest(name=name))
    return name


async def _add(store: Store, name: str, **fields: object) -> pb.AddResearchSourceResponse:
    source = common_pb2.ResearchSource(**fields)  # type: ignore[arg-type]
    return await store.stub.AddResearchSource(
        pb.AddResearchSourceRequest(artist_name=name, source=source)
    )


async def test_a_source_is_stored_with_its_fields_and_a_default_confidence(store: Store) -> None:
    name = await _artist(store)
    data = struct_pb2.Struct()
    data.update({"bpm": 92.5, "kit": ["snare", "hat"], "nested": {"swing": True}})
    reply = await _add(
        store,
        name,
        source_type=PAPER,
        url="https://example.org/dilla-swing.pdf",
        raw_content="Drummers quantised at 54% swing...",
        extracted_data=data,
    )
    source = reply.source
    assert source.id and source.collected_at.seconds > 0
    assert source.confidence == 0.5
    assert source.extracted_data == data
    listed = await store.stub.ListResearchSources(pb.ListResearchSourcesRequest(artist_name=name))
    assert list(listed.sources) == [source]


async def test_sources_are_listed_newest_first_in_pages_and_filtered_by_type(
    store: Store,
) -> None:
    name = await _artist(store)
    added = []
    for i in range(7):
        kind = PAPER if i % 2 == 0 else AUDIO
        added.append((await _add(store, name, source_type=kind, url=f"https://s/{i}")).source)
    seen: list[common_pb2.ResearchSource] = []
    token = ""
    while True:
        reply = await store.stub.ListResearchSources(
            pb.ListResearchSourcesRequest(artist_name=name, page_size=3, page_token=token)
        )
        seen.extend(reply.sources)
        token = reply.next_page_token
        if not token:
            break
    assert [s.url for s in seen] == [s.url for s in reversed(added)]
    papers = await store.stub.ListResearchSources(
        pb.ListResearchSourcesRequest(artist_name=name, source_type=PAPER)
    )
    assert [s.url for s in papers.sources] == [
        "https://s/6",
        "https://s/4",
        "https://s/2",
        "https://s/0",
    ]


async def test_a_page_token_of_one_artist_is_refused_for_another(store: Store) -> None:
    first, second = await _artist(store), await _artist(store)
    for name in (first, second):
        for _ in range(2):
            await _add(store, name, source_type=PAPER)
    reply = await store.stub.ListResearchSources(
        pb.ListResearchSourcesRequest(artist_name=first, page_size=1)
    )
    error = await rpc_error(
        store.stub.ListResearchSources(
            pb.ListResearchSourcesRequest(
                artist_name=second, page_size=1, page_token=reply.next_page_token
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sources_of_an_unknown_artist_are_not_found(store: Store) -> None:
    add = await rpc_error(_add(store, "Unknown Artist", source_type=PAPER))
    listing = await rpc_error(
        store.stub.ListResearchSources(pb.ListResearchSourcesRequest(artist_name="Unknown Artist"))
    )
    for error in (add, listing):
        assert error.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(error)
        assert info is not None and info.reason == "ARTIST_NOT_FOUND"


def _nan_struct() -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.fields["x"].number_value = math.nan
    return data


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({}, "source.source_type", "paper, article, audio, midi"),
        ({"source_type": PAPER, "url": "h" * 2049}, "source.url", "at most 2048"),
        ({"source_type": PAPER, "file_path": "p" * 1025}, "source.file_path", "at most 1024"),
        ({"source_type": PAPER, "confidence": 1.01}, "source.confidence", "between 0 and 1"),
        ({"source_type": PAPER, "extracted_data": _nan_struct()}, "extracted_data", "finite"),
    ],
)
async def test_invalid_sources_are_refused_without_a_write(
    store: Store, fields: dict[str, object], field: str, rule: str
) -> None:
    name = await _artist(store)
    error = await rpc_error(_add(store, name, **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(field in f and rule in d for f, d in field_violations(error))
    listed = await store.stub.ListResearchSources(pb.ListResearchSourcesRequest(artist_name=name))
    assert len(listed.sources) == 0


@pytest.mark.parametrize("size", [-5, 101])
async def test_source_page_sizes_out_of_bounds_are_refused(store: Store, size: int) -> None:
    name = await _artist(store)
    error = await rpc_error(
        store.stub.ListResearchSources(
            pb.ListResearchSourcesRequest(artist_name=name, page_size=size)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
