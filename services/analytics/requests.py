"""Validation of analytics requests: protobuf in, checked plain values out."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from shared import validation
from shared.convert import from_timestamp
from shared.errors import FieldViolation, InvalidArgument
from stylebase.analytics.v1 import analytics_service_pb2 as pb

PROVIDER_RE = re.compile(validation.PROVIDER_PATTERN)
TIME_SIGNATURE_RE = re.compile(validation.TIME_SIGNATURE_PATTERN)
INT32_MAX = 2**31 - 1
MAX_OUTPUT_FILES = validation.MAX_OUTPUT_FILES
MAX_PATH_LENGTH = validation.MAX_PATH_LENGTH
BARS_LOW, BARS_HIGH = validation.BARS_RANGE
TEMPO_LOW, TEMPO_HIGH = validation.TEMPO_BPM_RANGE
VARIATIONS_LOW, VARIATIONS_HIGH = validation.VARIATIONS_RANGE
HISTORY_LIMIT_DEFAULT = 10
HISTORY_LIMIT_MAX = 100
BATCH_MAX = 1000


@dataclass(frozen=True)
class NewGeneration:
    """A checked RecordGeneration request."""

    artist_name: str | None
    provider: str
    generation_time_ms: int
    tokens_used: int
    cost_usd: float
    user_params_json: str
    output_files_json: str


@dataclass(frozen=True)
class Window:
    """[since, until) on created_at; None is unbounded."""

    since: datetime | None
    until: datetime | None


def _name(value: str, field: str = "artist_name") -> str:
    return validation.artist_name(value, field)


def _user_params(params: pb.UserParams, problems: list[FieldViolation]) -> dict[str, object]:
    if not BARS_LOW <= params.bars <= BARS_HIGH:
        problems.append(
            FieldViolation("user_params.bars", f"must be between {BARS_LOW} and {BARS_HIGH}")
        )
    if not (math.isfinite(params.tempo) and TEMPO_LOW <= params.tempo <= TEMPO_HIGH):
        problems.append(
            FieldViolation(
                "user_params.tempo", f"must be between {TEMPO_LOW:g} and {TEMPO_HIGH:g} BPM"
            )
        )
    if not TIME_SIGNATURE_RE.fullmatch(params.time_signature):
        problems.append(
            FieldViolation(
                "user_params.time_signature",
                "must look like 4/4: 1..32 beats over 1, 2, 4, 8, 16 or 32",
            )
        )
    if not VARIATIONS_LOW <= params.variations <= VARIATIONS_HIGH:
        problems.append(
            FieldViolation(
                "user_params.variations",
                f"must be between {VARIATIONS_LOW} and {VARIATIONS_HIGH}",
            )
        )
    return {
        "bars": params.bars,
        "tempo": params.tempo,
        "time_signature": params.time_signature,
        "variations": params.variations,
    }


def new_generation(request: pb.RecordGenerationRequest) -> NewGeneration:
    """Every rule is checked; all violations are reported together."""
    problems: list[FieldViolation] = []
    artist: str | None = None
    if request.artist_name:
        try:
            artist = _name(request.artist_name)
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if not PROVIDER_RE.fullmatch(request.provider_used):
        problems.append(
            FieldViolation(
                "provider_used",
                "must be a lowercase identifier of 1 to 50 characters (a-z, 0-9, _ and -, "
                "starting with a letter), e.g. anthropic, google, openai, template",
            )
        )
    if request.generation_time_ms < 0:
        problems.append(FieldViolation("generation_time_ms", "must be >= 0"))
    if request.tokens_used < 0:
        problems.append(FieldViolation("tokens_used", "must be >= 0"))
    if not math.isfinite(request.cost_usd) or request.cost_usd < 0:
        problems.append(FieldViolation("cost_usd", "must be finite and >= 0"))
    if not request.HasField("user_params"):
        problems.append(FieldViolation("user_params", "is required"))
        params: dict[str, object] = {}
    else:
        params = _user_params(request.user_params, problems)
    if len(request.output_files) > MAX_OUTPUT_FILES:
        problems.append(FieldViolation("output_files", f"must hold at most {MAX_OUTPUT_FILES}"))
    for i, path in enumerate(request.output_files):
        if not 1 <= len(path) <= MAX_PATH_LENGTH or validation.has_control(path):
            problems.append(
                FieldViolation(
                    f"output_files[{i}]",
                    f"must be 1 to {MAX_PATH_LENGTH} characters, with no control characters",
                )
            )
    if problems:
        raise InvalidArgument.many(problems)
    return NewGeneration(
        artist_name=artist,
        provider=request.provider_used,
        generation_time_ms=request.generation_time_ms,
        tokens_used=request.tokens_used,
        cost_usd=request.cost_usd,
        user_params_json=json.dumps(params),
        output_files_json=json.dumps(list(request.output_files)),
    )


def new_generations(request: pb.BatchRecordGenerationsRequest) -> list[NewGeneration]:
    """Every item checked before anything is written; violations name generations[i]."""
    if not 1 <= len(request.generations) <= BATCH_MAX:
        raise InvalidArgument("generations", f"must hold 1 to {BATCH_MAX} items")
    problems: list[FieldViolation] = []
    checked: list[NewGeneration] = []
    for i, item in enumerate(request.generations):
        if item.request_id:
            problems.append(
                FieldViolation(
                    f"generations[{i}].request_id",
                    "must be empty: the batch's own request_id covers every item",
                )
            )
        try:
            checked.append(new_generation(item))
        except InvalidArgument as exc:
            problems.extend(
                FieldViolation(f"generations[{i}].{v.field}", v.description) for v in exc.violations
            )
    if problems:
        raise InvalidArgument.many(problems)
    return checked


# Windows are planned in whole months (services.analytics.windows), and the month after
# December 9999 is past what a datetime holds; nothing is recorded that late anyway.
WINDOW_MIN = datetime(1, 1, 1, tzinfo=UTC)
WINDOW_MAX = datetime(9999, 12, 1, tzinfo=UTC)
WINDOW_RULE = "must be between 0001-01-01T00:00:00Z and 9999-12-01T00:00:00Z"


def _instant(value: Timestamp, field: str) -> datetime:
    """Rounded up to PostgreSQL's microsecond, which keeps both bounds' meaning exact:
    created_at >= t and created_at < t are unchanged for microsecond created_at."""
    instant = from_timestamp(value, field)
    if value.nanos % 1000:
        if instant >= WINDOW_MAX:
            raise InvalidArgument(field, WINDOW_RULE)
        instant += timedelta(microseconds=1)
    if not WINDOW_MIN <= instant <= WINDOW_MAX:
        raise InvalidArgument(field, WINDOW_RULE)
    return instant


def window(request: pb.GetStatsRequest) -> Window:
    since = _instant(request.since, "since") if request.HasField("since") else None
    until = _instant(request.until, "until") if request.HasField("until") else None
    if since is not None and until is not None and until < since:
        raise InvalidArgument.many(
            [
                FieldViolation("since", "must not be after until"),
                FieldViolation("until", "must not be before since"),
            ]
        )
    return Window(since, until)


def history_name(request: pb.GetArtistHistoryRequest) -> str:
    return _name(request.artist_name)


def history_limit(request: pb.GetArtistHistoryRequest) -> int:
    return validation.bounded_int(
        request.limit, "limit", default=HISTORY_LIMIT_DEFAULT, low=1, high=HISTORY_LIMIT_MAX
    )
