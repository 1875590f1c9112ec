"""Shared input rules and page tokens: what every service refuses; tokens that cannot be forged."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import pagination, validation
from shared.convert import source_type_to_db, status_from_db, status_to_db
from shared.errors import InvalidArgument
from stylebase.common.v1 import common_pb2


def test_artist_name_is_trimmed() -> None:
    assert validation.artist_name("  J Dilla \t") == "J Dilla"


@pytest.mark.parametrize("name", ["", "   ", "x" * 256])
def test_artist_name_out_of_bounds_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="artist_name"):
        validation.artist_name(name)


def test_name_of_255_characters_after_trimming_is_accepted() -> None:
    assert len(validation.artist_name(" " + "y" * 255 + " ")) == 255


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ([0.1] * 383, "exactly 384 values, got 383"),
        ([0.1] * 385, "exactly 384 values, got 385"),
        ([0.0] * 384, "non-zero norm"),
        ([0.1] * 383 + [math.nan], "finite"),
        ([math.inf] + [0.1] * 383, "finite"),
    ],
)
def test_bad_embeddings_are_refused_naming_the_rule(values: list[float], rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.embedding(values, "profile.embedding")
    assert caught.value.message.startswith("profile.embedding")
    assert rule in caught.value.message


def test_nan_position_is_named() -> None:
    with pytest.raises(InvalidArgument, match=r"embedding\[7\]"):
        validation.embedding([0.1] * 7 + [math.nan] + [0.1] * 376)


@pytest.mark.parametrize(("value", "expected"), [(0, 20), (1, 1), (100, 100)])
def test_page_size_default_and_bounds(value: int, expected: int) -> None:
    assert validation.page_size(value) == expected


@pytest.mark.parametrize("value", [-1, 101])
def test_page_size_outside_bounds_is_refused(value: int) -> None:
    with pytest.raises(InvalidArgument, match="page_size: must be between 1 and 100"):
        validation.page_size(value)


def test_malformed_uuid_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="id: must be a UUID"):
        validation.uuid_value("not-a-uuid", "id")


@given(
    after_id=st.uuids().map(str),
    after_key=st.text(max_size=40),
    moment=st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
)
def test_page_token_round_trips(after_id: str, after_key: str, moment: datetime) -> None:
    filters = pagination.filter_hash("artists", "cached")
    token = pagination.encode(
        after_id=after_id, filters=filters, after_time=moment, after_key=after_key
    )
    cursor = pagination.decode(token, filters=filters)
    assert cursor is not None
    assert cursor.after_id == after_id
    assert cursor.after_key == after_key
    assert cursor.after_time.ToDatetime(tzinfo=UTC) == moment


def test_empty_token_means_first_page() -> None:
    assert pagination.decode("", filters="x") is None


def test_token_from_another_query_is_refused() -> None:
    token = pagination.encode(after_id=str(uuid.uuid4()), filters=pagination.filter_hash("a"))
    with pytest.raises(InvalidArgument, match="different query"):
        pagination.decode(token, filters=pagination.filter_hash("b"))


@pytest.mark.parametrize("token", ["!!!", "bm90IGEgY3Vyc29y", "AAAA"])
def test_garbage_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        pagination.decode(token, filters="x")


def test_status_and_source_type_mapping() -> None:
    assert status_to_db(common_pb2.RESEARCH_STATUS_CACHED) == "cached"
    assert status_from_db("failed") == common_pb2.RESEARCH_STATUS_FAILED
    with pytest.raises(InvalidArgument, match="research_status"):
        status_to_db(common_pb2.RESEARCH_STATUS_UNSPECIFIED)
    assert source_type_to_db(common_pb2.SOURCE_TYPE_MIDI) == "midi"
    with pytest.raises(InvalidArgument, match="source_type: must be one of paper"):
        source_type_to_db(common_pb2.SOURCE_TYPE_UNSPECIFIED)
