"""The JSON shapes of the API, as the specification writes them; OpenAPI is built from these.

Responses are built as plain dicts in convert.py (cheaper than validating models on the hot
path); the tests and the schema fuzzing check that each one matches its model here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from shared import validation as rules
from shared.db.idempotency import REQUEST_ID_MAX

INT32_MAX = 2**31 - 1
# The largest integer every JSON client reads exactly (a double's 53-bit mantissa).
JSON_SAFE_INT_MAX = 2**53 - 1
ResearchStatusName = Literal["pending", "researching", "cached", "failed"]


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which no protobuf string can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _not_bool(value: object) -> object:
    # Lax parsing would read true as 1; a JSON boolean is not a number.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Text = Annotated[str, AfterValidator(_encodable)]
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def documented(pattern: str) -> JsonDict:
    """A pattern stated in the schema for clients and fuzzers, and enforced by the service
    behind the endpoint, whose message names the rule in words."""
    return {"pattern": pattern}


NAME_RULE = documented(rules.NAME_PATTERN)
# 1 to 64 printable ASCII characters without spaces, or empty.
REQUEST_ID_PATTERN = rf"^([!-~]{{1,{REQUEST_ID_MAX}}})?$"


class SimilarArtist(BaseModel):
    name: str
    # 1 - cosine distance, in -1..1.
    similarity: float


class SimilarArtists(BaseModel):
    artist: str
    similar_artists: list[SimilarArtist]


class ProviderStats(BaseModel):
    provider: str
    generations: int
    avg_generation_time_ms: float
    avg_cost_usd: float
    total_cost_usd: float


class Stats(BaseModel):
    total_generations: int
    avg_generation_time_ms: float
    total_cost_usd: float
    provider_usage: dict[str, int]
    avg_cost_per_generation: float
    cached_artists: int
    p50_generation_time_ms: float
    p95_generation_time_ms: float
    providers: list[ProviderStats]
    total_tokens: int
    # Upper bound on the relative error of the percentiles (0 when exact).
    percentile_relative_error: float


class UserParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: Int = Field(ge=rules.BARS_RANGE[0], le=rules.BARS_RANGE[1])
    # BPM.
    tempo: Float = Field(
        ge=rules.TEMPO_BPM_RANGE[0], le=rules.TEMPO_BPM_RANGE[1], allow_inf_nan=False
    )
    # Like 4/4: 1..32 beats over 1, 2, 4, 8, 16 or 32.
    time_signature: Text = Field(json_schema_extra=documented(f"^{rules.TIME_SIGNATURE_PATTERN}$"))
    variations: Int = Field(ge=rules.VARIATIONS_RANGE[0], le=rules.VARIATIONS_RANGE[1])


class HistoryEntry(BaseModel):
    id: str
    provider_used: str
    generation_time_ms: int
    tokens_used: int
    cost_usd: float
    user_params: UserParams | None
    created_at: datetime


class ArtistHistory(BaseModel):
    artist: str
    total_generations: int
    history: list[HistoryEntry]
    # Empty on the last page.
    next_page_token: str


class QuantitativeParams(BaseModel):
    tempo_min: float
    tempo_max: float
    tempo_avg: float
    swing_percent: float
    ghost_note_prob: float
    syncopation_level: float
    velocity_mean: float
    velocity_std: float


class SourceCounts(BaseModel):
    papers: int
    articles: int
    audio: int
    midi: int


class StyleProfile(BaseModel):
    id: str
    artist_id: str
    artist_name: str
    text_description: str
    quantitative_params: QuantitativeParams | None
    midi_templates: list[str]
    # Present only with ?include_embedding=true: 384 values, or none when not searchable.
    embedding: list[float] | None = None
    confidence_score: float
    sources_count: SourceCounts | None
    created_at: datetime | None
    updated_at: datetime | None
    # Increases with every save; pass it as min_version to read your own write.
    version: int


class ProfileRead(BaseModel):
    profile: StyleProfile
    served_from: Literal["in_process", "redis", "store"]
    # True only when served from a cache tier while the store was unreachable.
    stale: bool
    # How long ago the copy was read from the store.
    age_seconds: float


class Artist(BaseModel):
    id: str
    name: str
    research_status: ResearchStatusName | Literal["unspecified"]
    last_updated: datetime | None
    sources_count: int
    confidence_score: float
    created_at: datetime | None


class ArtistPage(BaseModel):
    artists: list[Artist]
    # Empty on the last page.
    next_page_token: str


class NewGeneration(BaseModel):
    """One generation to record; the analytics service's rules apply to each field."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "artist_name": "J Dilla",
                    "provider_used": "anthropic",
                    "generation_time_ms": 1200,
                    "tokens_used": 900,
                    "cost_usd": 0.012,
                    "user_params": {
                        "bars": 4,
                        "tempo": 92,
                        "time_signature": "4/4",
                        "variations": 2,
                    },
                    "output_files": ["out/dilla-1.mid"],
                }
            ]
        },
    )

    # Optional; an unknown name is 404.
    artist_name: Text = Field(
        default="",
        max_length=rules.NAME_MAX,
        json_schema_extra=documented(f"^$|{rules.NAME_PATTERN}"),
    )
    # anthropic, google, openai, template, or another lowercase identifier.
    provider_used: Text = Field(json_schema_extra=documented(f"^{rules.PROVIDER_PATTERN}$"))
    generation_time_ms: Int = Field(ge=0, le=INT32_MAX)
    tokens_used: Int = Field(default=0, ge=0, le=JSON_SAFE_INT_MAX)
    cost_usd: Float = Field(default=0.0, ge=0, allow_inf_nan=False)
    user_params: UserParams
    output_files: list[
        Annotated[
            Text,
            Field(
                min_length=1,
                max_length=rules.MAX_PATH_LENGTH,
                json_schema_extra=documented(r"^[^\x00-\x1f\x7f-\x9f]*$"),
            ),
        ]
    ] = Field(default_factory=list, max_length=rules.MAX_OUTPUT_FILES)


class Generation(BaseModel):
    id: str
    artist_id: str
    artist_name: str
    provider_used: str
    generation_time_ms: int
    tokens_used: int
    cost_usd: float
    user_params: UserParams | None
    output_files: list[str]
    created_at: datetime


class Health(BaseModel):
    status: Literal["ok", "not_ready"]
    # Upstream services not answering SERVING (readiness only).
    not_serving: list[str] = Field(default_factory=list)
