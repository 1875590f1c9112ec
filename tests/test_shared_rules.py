"""Shared input rules and page tokens: what every service refuses; tokens that cannot be forged."""

from __future__ import annotations

import base64
import math
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.analytics import requests
from services.analytics.windows import plan
from services.profile_store import validation as store_validation
from shared import convert, pagination, validation
from shared.convert import source_type_to_db, status_from_db, status_to_db
from shared.errors import InvalidArgument
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
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


@pytest.mark.parametrize(
    "name", ["J\x00Dilla", "J\tDilla", "J\nDilla", "J\x1bDilla", "J\x7fDilla", "J\x85Dilla"]
)
def test_control_characters_inside_a_name_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="control characters") as caught:
        validation.artist_name(name, "profile.artist_name")
    assert caught.value.violations[0].field == "profile.artist_name"


def test_free_text_keeps_tabs_and_newlines_but_not_nul() -> None:
    assert validation.bounded_text("a\tb\nc\r\n", "text_description", 100) == "a\tb\nc\r\n"
    with pytest.raises(InvalidArgument, match="NUL") as caught:
        validation.bounded_text("a\x00b", "text_description", 100)
    assert caught.value.violations[0].field == "text_description"


@pytest.mark.parametrize("value", ["a\nb", "a\x00", "\x1b[31m", "a\tb"])
def test_single_line_values_refuse_every_control_character(value: str) -> None:
    with pytest.raises(InvalidArgument, match="control characters"):
        validation.single_line(value, "url", 100)


@pytest.mark.parametrize(
    ("seconds", "nanos", "field"),
    [
        (convert.TIMESTAMP_SECONDS_MAX + 1, 0, "since.seconds"),
        (convert.TIMESTAMP_SECONDS_MIN - 1, 0, "since.seconds"),
        (2**63 - 1, 0, "since.seconds"),
        (0, -1, "since.nanos"),
        (0, 1_000_000_000, "since.nanos"),
    ],
)
def test_timestamps_outside_their_range_are_refused_naming_the_part(
    seconds: int, nanos: int, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.from_timestamp(Timestamp(seconds=seconds, nanos=nanos), "since")
    assert caught.value.violations[0].field == field


def test_timestamp_range_edges_are_accepted() -> None:
    low = convert.from_timestamp(Timestamp(seconds=convert.TIMESTAMP_SECONDS_MIN))
    high = convert.from_timestamp(Timestamp(seconds=convert.TIMESTAMP_SECONDS_MAX, nanos=999_999))
    assert (low.year, high.year) == (1, 9999)


@pytest.mark.parametrize(
    ("since", "until", "fields"),
    [
        # The end of Timestamp's range: the window plan's next month is past datetime's.
        (Timestamp(seconds=convert.TIMESTAMP_SECONDS_MAX), None, ["since"]),
        (Timestamp(seconds=convert.TIMESTAMP_SECONDS_MAX + 1), None, ["since.seconds"]),
        (None, Timestamp(seconds=0, nanos=-5), ["until.nanos"]),
        (Timestamp(seconds=100), Timestamp(seconds=50), ["since", "until"]),
    ],
)
def test_stats_window_edges_are_invalid_argument_naming_the_fields(
    since: Timestamp | None, until: Timestamp | None, fields: list[str]
) -> None:
    request = analytics_pb.GetStatsRequest(since=since, until=until)
    with pytest.raises(InvalidArgument) as caught:
        requests.window(request)
    assert [v.field for v in caught.value.violations] == fields


def test_stats_window_up_to_its_last_month_is_planned() -> None:
    edge = Timestamp(seconds=int(requests.WINDOW_MAX.timestamp()))
    window = requests.window(analytics_pb.GetStatsRequest(since=edge))
    assert plan(window.since, window.until).spans


def test_page_token_with_an_instant_out_of_range_is_refused() -> None:
    filters = pagination.filter_hash("artists", None)
    cursor = common_pb2.PageCursor(after_id=str(uuid.uuid4()), filter_hash=filters)
    cursor.after_time.seconds = convert.TIMESTAMP_SECONDS_MAX + 1
    token = base64.urlsafe_b64encode(cursor.SerializeToString()).decode()
    with pytest.raises(InvalidArgument, match="page_token"):
        pagination.decode(token, filters=filters)


def test_tempo_order_names_the_fields_that_break_it() -> None:
    message = common_pb2.StyleProfile(
        artist_name="J Dilla",
        quantitative_params=common_pb2.QuantitativeParams(
            tempo_min=120, tempo_max=90, tempo_avg=100
        ),
    )
    with pytest.raises(InvalidArgument) as caught:
        store_validation.profile(message)
    fields = [v.field for v in caught.value.violations]
    assert "profile.quantitative_params.tempo_min" in fields
    assert "profile.quantitative_params.tempo_max" in fields
    assert "profile.quantitative_params.tempo_avg" not in fields
