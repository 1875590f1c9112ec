"""Rules for incoming profiles and research sources; every failure names the field and the rule."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from services.profile_store import vectors
from shared import convert, validation
from shared.db.models import EMBEDDING_DIM
from shared.errors import FieldViolation, InvalidArgument
from stylebase.common.v1 import common_pb2

BATCH_MAX = 1000
DESCRIPTION_MAX = 20_000
MIDI_TEMPLATES_MAX = 100
PATH_MAX = 1024
URL_MAX = 2048
RAW_CONTENT_MAX = 1_000_000
TEMPO_MAX = 1000.0
INT32_MAX = 2**31 - 1

# (field, low, high) for the bounded quantitative parameters; tempos are checked apart.
_PARAM_RANGES = (
    ("swing_percent", 0.0, 100.0),
    ("ghost_note_prob", 0.0, 1.0),
    ("syncopation_level", 0.0, 1.0),
    ("velocity_mean", 0.0, 127.0),
    ("velocity_std", 0.0, 127.0),
)


@dataclass(frozen=True)
class ProfileInput:
    """A validated profile, in the shapes the database takes."""

    artist_name: str
    text_description: str
    params_json: str
    midi_templates_json: str
    # pgvector binary form, or None for a profile that is not searchable.
    embedding: bytes | None
    confidence_score: float
    sources_count_json: str
    sources_total: int


@dataclass(frozen=True)
class SourceInput:
    source_type: str
    url: str | None
    file_path: str | None
    raw_content: str | None
    extracted_data_json: str | None
    confidence: float


class _Violations:
    """Collects every broken rule of a request so the client can fix them in one go."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, rule: str) -> None:
        self.items.append(FieldViolation(field, rule))

    def check(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except InvalidArgument as error:
            self.items.extend(error.violations)
            return None

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument.many(self.items)


def _text(v: _Violations, value: str, field: str, max_length: int) -> str:
    v.check(lambda: validation.bounded_text(value, field, max_length))
    return value


def _line(v: _Violations, value: str, field: str, max_length: int) -> str:
    v.check(lambda: validation.single_line(value, field, max_length))
    return value


def _name(v: _Violations, value: str, field: str) -> str:
    name: str | None = v.check(lambda: validation.artist_name(value, field))
    return name or ""


def _in_range(v: _Violations, value: float, field: str, low: float, high: float) -> None:
    v.check(lambda: validation.finite_in_range(value, field, low, high))


def _params(v: _Violations, profile: common_pb2.StyleProfile, field: str) -> None:
    if not profile.HasField("quantitative_params"):
        v.add(field, "is required (tempo_min, tempo_max and tempo_avg must be positive)")
        return
    params = profile.quantitative_params
    tempos = {"tempo_min": params.tempo_min, "tempo_avg": params.tempo_avg}
    tempos["tempo_max"] = params.tempo_max
    in_range = True
    for name, value in tempos.items():
        if not math.isfinite(value) or not 0 < value <= TEMPO_MAX:
            v.add(f"{field}.{name}", f"must be positive and at most {TEMPO_MAX:g} BPM")
            in_range = False
    # The order is judged only between valid tempos, and blames the fields that break it.
    if in_range and params.tempo_min > params.tempo_max:
        v.add(f"{field}.tempo_min", "must satisfy tempo_min <= tempo_max")
        v.add(f"{field}.tempo_max", "must satisfy tempo_min <= tempo_max")
    elif in_range and not params.tempo_min <= params.tempo_avg <= params.tempo_max:
        v.add(f"{field}.tempo_avg", "must satisfy tempo_min <= tempo_avg <= tempo_max")
    for name, low, high in _PARAM_RANGES:
        _in_range(v, getattr(params, name), f"{field}.{name}", low, high)


def _embedding(v: _Violations, values: Sequence[float], field: str) -> bytes | None:
    if len(values) == 0:
        return None
    array = np.asarray(values, dtype=np.float64)
    # numpy answers the common case fast; the shared rule words the failure.
    if len(array) == EMBEDDING_DIM and np.isfinite(array).all() and array.any():
        return vectors.encode(values)
    checked = v.check(lambda: validation.embedding(values, field))
    return None if checked is None else vectors.encode(checked)


def _counts(v: _Violations, counts: common_pb2.SourceCounts, field: str) -> int:
    values = convert.counts_to_json(counts)
    for name, value in values.items():
        if value < 0:
            v.add(f"{field}.{name}", "must not be negative")
    total = sum(values.values())
    if total > INT32_MAX:
        v.add(field, f"the total must be at most {INT32_MAX}")
    return total


def _profile(v: _Violations, profile: common_pb2.StyleProfile, prefix: str) -> ProfileInput:
    name = _name(v, profile.artist_name, f"{prefix}.artist_name")
    description = _text(v, profile.text_description, f"{prefix}.text_description", DESCRIPTION_MAX)
    _params(v, profile, f"{prefix}.quantitative_params")
    if len(profile.midi_templates) > MIDI_TEMPLATES_MAX:
        v.add(f"{prefix}.midi_templates", f"must have at most {MIDI_TEMPLATES_MAX} paths")
    for i, path in enumerate(profile.midi_templates):
        if not path:
            v.add(f"{prefix}.midi_templates[{i}]", "must not be empty")
        _line(v, path, f"{prefix}.midi_templates[{i}]", PATH_MAX)
    embedding = _embedding(v, profile.embedding, f"{prefix}.embedding")
    _in_range(v, profile.confidence_score, f"{prefix}.confidence_score", 0.0, 1.0)
    total = _counts(v, profile.sources_count, f"{prefix}.sources_count")
    return ProfileInput(
        artist_name=name,
        text_description=description,
        params_json=json.dumps(convert.params_to_json(profile.quantitative_params)),
        midi_templates_json=json.dumps(list(profile.midi_templates)),
        embedding=embedding,
        confidence_score=profile.confidence_score,
        sources_count_json=json.dumps(convert.counts_to_json(profile.sources_count)),
        sources_total=total,
    )


def profile(message: common_pb2.StyleProfile, prefix: str = "profile") -> ProfileInput:
    v = _Violations()
    result = _profile(v, message, prefix)
    v.raise_if_any()
    return result


def profiles(messages: Sequence[common_pb2.StyleProfile]) -> list[ProfileInput]:
    """A whole batch, refused as a whole when any item breaks a rule."""
    if not 1 <= len(messages) <= BATCH_MAX:
        raise InvalidArgument("profiles", f"must hold 1 to {BATCH_MAX} profiles")
    v = _Violations()
    out: list[ProfileInput] = []
    first_index: dict[str, int] = {}
    for i, message in enumerate(messages):
        item = _profile(v, message, f"profiles[{i}]")
        if item.artist_name in first_index:
            other = first_index[item.artist_name]
            v.add(f"profiles[{i}].artist_name", f"must differ from profiles[{other}].artist_name")
        elif item.artist_name:
            first_index[item.artist_name] = i
        out.append(item)
    v.raise_if_any()
    return out


def _json_safe(v: _Violations, value: Any, field: str) -> None:
    """PostgreSQL's jsonb holds neither NaN, infinities nor NUL characters."""
    if isinstance(value, float) and not math.isfinite(value):
        v.add(field, "must hold only finite numbers")
    elif isinstance(value, str) and "\x00" in value:
        v.add(field, validation.NUL_RULE)
    elif isinstance(value, dict):
        for key, item in value.items():
            _json_safe(v, key, field)
            _json_safe(v, item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_safe(v, item, f"{field}[{i}]")


def source(message: common_pb2.ResearchSource, prefix: str = "source") -> SourceInput:
    v = _Violations()
    source_type = v.check(
        lambda: convert.source_type_to_db(message.source_type, f"{prefix}.source_type")
    )
    _line(v, message.url, f"{prefix}.url", URL_MAX)
    _line(v, message.file_path, f"{prefix}.file_path", PATH_MAX)
    _text(v, message.raw_content, f"{prefix}.raw_content", RAW_CONTENT_MAX)
    data_json: str | None = None
    if message.HasField("extracted_data"):
        try:
            data = json_format.MessageToDict(message.extracted_data)
        except (json_format.Error, ValueError):
            v.add(f"{prefix}.extracted_data", "must hold only finite numbers")
            data = {}
        _json_safe(v, data, f"{prefix}.extracted_data")
        data_json = json.dumps(data)
        if len(data_json) > RAW_CONTENT_MAX:
            v.add(f"{prefix}.extracted_data", f"must be at most {RAW_CONTENT_MAX} bytes as JSON")
    confidence = message.confidence if message.HasField("confidence") else 0.5
    _in_range(v, confidence, f"{prefix}.confidence", 0.0, 1.0)
    v.raise_if_any()
    return SourceInput(
        source_type=source_type,
        url=message.url or None,
        file_path=message.file_path or None,
        raw_content=message.raw_content or None,
        extracted_data_json=data_json,
        confidence=confidence,
    )
