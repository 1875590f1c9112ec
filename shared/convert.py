"""Conversions between database rows and the common protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from shared.errors import InvalidArgument
from stylebase.common.v1 import common_pb2

_STATUS_TO_DB = {
    common_pb2.RESEARCH_STATUS_PENDING: "pending",
    common_pb2.RESEARCH_STATUS_RESEARCHING: "researching",
    common_pb2.RESEARCH_STATUS_CACHED: "cached",
    common_pb2.RESEARCH_STATUS_FAILED: "failed",
}
_STATUS_FROM_DB = {v: k for k, v in _STATUS_TO_DB.items()}
_SOURCE_TO_DB = {
    common_pb2.SOURCE_TYPE_PAPER: "paper",
    common_pb2.SOURCE_TYPE_ARTICLE: "article",
    common_pb2.SOURCE_TYPE_AUDIO: "audio",
    common_pb2.SOURCE_TYPE_MIDI: "midi",
}
_SOURCE_FROM_DB = {v: k for k, v in _SOURCE_TO_DB.items()}


def status_to_db(value: int, field: str = "research_status") -> str:
    try:
        return _STATUS_TO_DB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            field, "must be one of pending, researching, cached, failed"
        ) from None


def status_from_db(value: str) -> common_pb2.ResearchStatus.ValueType:
    return _STATUS_FROM_DB[value]


def source_type_to_db(value: int, field: str = "source_type") -> str:
    try:
        return _SOURCE_TO_DB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, "must be one of paper, article, audio, midi") from None


def source_type_from_db(value: str) -> common_pb2.SourceType.ValueType:
    return _SOURCE_FROM_DB[value]


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS_MIN = -62_135_596_800
TIMESTAMP_SECONDS_MAX = 253_402_300_799
NANOS_MAX = 999_999_999


def from_timestamp(value: Timestamp, field: str = "timestamp") -> datetime:
    """The instant, or InvalidArgument naming field when it lies outside Timestamp's range."""
    if not TIMESTAMP_SECONDS_MIN <= value.seconds <= TIMESTAMP_SECONDS_MAX:
        raise InvalidArgument(
            f"{field}.seconds", "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        )
    if not 0 <= value.nanos <= NANOS_MAX:
        raise InvalidArgument(f"{field}.nanos", f"must be between 0 and {NANOS_MAX}")
    return value.ToDatetime(tzinfo=UTC)


def artist_to_proto(row: Any) -> common_pb2.Artist:
    """From an Artist model or a result row with the artists table's columns."""
    return common_pb2.Artist(
        id=str(row.id),
        name=row.name,
        research_status=status_from_db(row.research_status),
        last_updated=timestamp(row.last_updated),
        sources_count=row.sources_count,
        confidence_score=row.confidence_score,
        created_at=timestamp(row.created_at),
    )


def params_to_json(params: common_pb2.QuantitativeParams) -> dict[str, float]:
    return {
        f.name: getattr(params, f.name) for f in common_pb2.QuantitativeParams.DESCRIPTOR.fields
    }


def counts_to_json(counts: common_pb2.SourceCounts) -> dict[str, int]:
    return {f.name: getattr(counts, f.name) for f in common_pb2.SourceCounts.DESCRIPTOR.fields}
