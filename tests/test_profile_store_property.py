"""Properties: any valid profile reads back equal field by field; any invalid one writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from tests.profile_store_support import Store, count, running_store

TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
# Names and paths are single lines: no control character (category Cc) at all.
LINE = st.characters(exclude_categories=["Cs", "Cc"])
unit = st.floats(0.0, 1.0)


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    async with running_store(database_url) as opened:
        yield opened


@st.composite
def params(draw: st.DrawFn) -> common_pb2.QuantitativeParams:
    tempo_min, tempo_avg, tempo_max = sorted(
        draw(st.lists(st.floats(0.001, 1000.0), min_size=3, max_size=3))
    )
    return common_pb2.QuantitativeParams(
        tempo_min=tempo_min,
        tempo_avg=tempo_avg,
        tempo_max=tempo_max,
        swing_percent=draw(st.floats(0.0, 100.0)),
        ghost_note_prob=draw(unit),
        syncopation_level=draw(unit),
        velocity_mean=draw(st.floats(0.0, 127.0)),
        velocity_std=draw(st.floats(0.0, 127.0)),
    )


embeddings: st.SearchStrategy[list[float]] = st.one_of(
    st.just([]),
    st.lists(st.floats(-10.0, 10.0, width=32), min_size=384, max_size=384).filter(
        lambda values: any(values)
    ),
)


@st.composite
def valid_profiles(draw: st.DrawFn) -> common_pb2.StyleProfile:
    # A unique prefix keeps examples apart; the drawn tail exercises trimming and Unicode.
    tail = draw(st.text(LINE, max_size=40))
    return common_pb2.StyleProfile(
        artist_name=f"  Prop {uuid.uuid4().hex[:12]} {tail}"[:250],
        text_description=draw(st.text(TEXT, max_size=300)),
        quantitative_params=draw(params()),
        midi_templates=draw(st.lists(st.text(LINE, min_size=1, max_size=60), max_size=3)),
        embedding=draw(embeddings),
        confidence_score=draw(unit),
        sources_count=common_pb2.SourceCounts(
            papers=draw(st.integers(0, 10_000)),
            articles=draw(st.integers(0, 10_000)),
            audio=draw(st.integers(0, 10_000)),
            midi=draw(st.integers(0, 10_000)),
        ),
    )


FIELDS = (
    "text_description",
    "quantitative_params",
    "midi_templates",
    "embedding",
    "confidence_score",
    "sources_count",
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=valid_profiles())
async def test_any_valid_profile_saved_and_read_back_is_equal_field_by_field(
    store: Store, message: common_pb2.StyleProfile
) -> None:
    saved = await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=message))
    name = message.artist_name.strip()
    read = await store.stub.GetStyleProfile(pb.GetStyleProfileRequest(artist_name=name))
    assert read.profile == saved.profile
    assert read.profile.artist_name == name
    for field in FIELDS:
        assert getattr(read.profile, field) == getattr(message, field), field
    assert read.profile.version == saved.profile.version > 0


Breaker = Callable[[common_pb2.StyleProfile], None]


def _set_param(name: str, value: float) -> Breaker:
    return lambda m: setattr(m.quantitative_params, name, value)


def _set(name: str, value: object) -> Breaker:
    return lambda m: setattr(m, name, value)


def _embedding(values: list[float]) -> Breaker:
    def apply(m: common_pb2.StyleProfile) -> None:
        del m.embedding[:]
        m.embedding.extend(values)

    return apply


BREAKERS: list[Breaker] = [
    _set_param("tempo_min", 0.0),
    _set_param("tempo_max", float("inf")),
    _set_param("tempo_avg", 5000.0),
    _set_param("swing_percent", 100.5),
    _set_param("ghost_note_prob", -0.01),
    _set_param("syncopation_level", float("nan")),
    _set_param("velocity_mean", 127.5),
    _set_param("velocity_std", -3.0),
    _set("confidence_score", 1.0001),
    _set("text_description", "x" * 20_001),
    _embedding([0.5] * 385),
    _embedding([0.0] * 384),
    _embedding([float("nan")] * 384),
    lambda m: setattr(m.sources_count, "audio", -1),
    lambda m: m.midi_templates.append(""),
    lambda m: m.ClearField("quantitative_params"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=valid_profiles(), breaker=st.sampled_from(BREAKERS))
async def test_any_invalid_profile_is_refused_without_a_write(
    store: Store, message: common_pb2.StyleProfile, breaker: Breaker
) -> None:
    breaker(message)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store.stub.SaveStyleProfile(pb.SaveStyleProfileRequest(profile=message))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    name = message.artist_name.strip()
    assert await count(store.db, "SELECT count(*) FROM artists WHERE name = :n", n=name) == 0
