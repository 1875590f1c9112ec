"""The endpoints: each validates its parameters, makes its gRPC calls within the request's
deadline, and answers with the specification's JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import Response
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.convertors import Convertor, register_url_convertor

from services.http_api import convert, models
from services.http_api.deadline import remaining
from services.http_api.errors import ApiError, ErrorBody
from services.http_api.models import documented
from services.http_api.upstream import Upstreams
from shared import validation as rules
from shared.logging import new_request_id
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.similarity.v1 import similarity_service_pb2 as similarity_pb

# Protobuf Timestamps span 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "A parameter breaks a rule; field_violations names each.",
        404: "The artist (or another named thing) does not exist.",
        409: "The request conflicts with the current state (a reused Idempotency-Key, or a "
        "min_version the store has not reached).",
        413: "The request body is too large.",
        429: "Too many requests; retry after Retry-After seconds.",
        500: "A bug: the body names the request id to look up in the server log.",
        503: "An upstream service is unavailable; retry after Retry-After seconds.",
        504: "The request's deadline (X-Request-Timeout, 5 s by default) passed.",
    }
    common = (400, 500, 503, 504)
    return {
        code: {"model": ErrorBody, "description": described[code]}
        for code in sorted({*common, *statuses})
    }


class _Name(Convertor[str]):
    """Any text, newlines included (Starlette's own "path" stops at one): a percent-encoded
    name reaches the service, which says what is wrong with it."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("name", _Name())
router = APIRouter(prefix="/api/v1")

ArtistName = Annotated[
    str,
    Path(
        description="The artist's name, percent-encoded (1 to 255 characters after trimming, "
        "no control characters).",
        max_length=rules.NAME_MAX,
        json_schema_extra=models.NAME_RULE,
        openapi_examples={"J Dilla": {"value": "J Dilla"}, "Questlove": {"value": "Questlove"}},
    ),
]
DATE_TIME: dict[str, Any] = {"json_schema_extra": {"format": "date-time"}, "max_length": 64}
TEMPO = {"ge": rules.FILTER_TEMPO_RANGE[0], "le": rules.FILTER_TEMPO_RANGE[1]}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _instant(field: str, value: str | None) -> Timestamp | None:
    """An RFC 3339 timestamp (numbers and dates without an offset are refused) as a Timestamp."""
    if value is None:
        return None
    if not RFC3339.match(value):
        raise ApiError.invalid(field, "must be an RFC 3339 timestamp like 2026-12-02T10:15:00Z")
    # Python's parser stops at microseconds; nanoseconds are kept by hand.
    head, dot, tail = value.partition(".")
    fraction = ""
    if dot:
        digits = re.match(r"\d+", tail)
        assert digits is not None
        fraction = digits.group(0)
        value = head + tail[len(fraction) :]
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise ApiError.invalid(field, f"is not a valid instant: {exc}") from None
    stamp = _timestamp(field, parsed)
    assert stamp is not None
    stamp.nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return stamp


def _upstreams(request: Request) -> Upstreams:
    upstreams: Upstreams = request.app.state.upstreams
    return upstreams


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, allow_nan=False),
        status_code=status,
        media_type="application/json",
    )


def _timestamp(field: str, value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    # Integer arithmetic: a float timestamp rounds 9999-12-31T23:59:59.999999 up past the range.
    delta = value - EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ApiError.invalid(
            field, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        )
    return Timestamp(seconds=seconds, nanos=delta.microseconds * 1000)


@router.get(
    "/similar/{artist:name}",
    response_model=models.SimilarArtists,
    responses=_errors(404),
    summary="Artists who play like this one, best first",
)
async def similar(
    request: Request,
    artist: ArtistName,
    limit: Annotated[int, Query(ge=1, le=20)] = 5,
    min_tempo: Annotated[float | None, Query(allow_inf_nan=False, **TEMPO)] = None,
    max_tempo: Annotated[float | None, Query(allow_inf_nan=False, **TEMPO)] = None,
    status: Annotated[models.ResearchStatusName | None, Query()] = None,
) -> Response:
    query = similarity_pb.FindSimilarArtistsRequest(artist_name=artist, limit=limit)
    if min_tempo is not None:
        query.filter.tempo_min = min_tempo
    if max_tempo is not None:
        query.filter.tempo_max = max_tempo
    if status is not None:
        query.filter.research_status = convert.STATUS_VALUES[status]
    up = _upstreams(request)
    reply = await up.similarity.FindSimilarArtists(
        query, timeout=remaining(), metadata=up.metadata()
    )
    return _json(
        {
            "artist": artist,
            "similar_artists": [
                {"name": a.artist_name, "similarity": a.similarity} for a in reply.artists
            ],
        }
    )


@router.get(
    "/stats",
    response_model=models.Stats,
    responses=_errors(),
    summary="Generation statistics over the whole history or a window",
)
async def stats(
    request: Request,
    since: Annotated[str | None, Query(description="RFC 3339, inclusive", **DATE_TIME)] = None,
    until: Annotated[str | None, Query(description="RFC 3339, exclusive", **DATE_TIME)] = None,
) -> Response:
    query = analytics_pb.GetStatsRequest(
        since=_instant("since", since), until=_instant("until", until)
    )
    up = _upstreams(request)
    reply = await up.analytics.GetStats(query, timeout=remaining(), metadata=up.metadata())
    return _json(convert.stats(reply))


@router.get(
    "/artists/{artist:name}/history",
    response_model=models.ArtistHistory,
    responses=_errors(404),
    summary="An artist's generations, newest first",
)
async def history(
    request: Request,
    artist: ArtistName,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    page_token: Annotated[str, Query(max_length=4096)] = "",
) -> Response:
    query = analytics_pb.GetArtistHistoryRequest(
        artist_name=artist, limit=limit, page_token=page_token
    )
    up = _upstreams(request)
    reply = await up.analytics.GetArtistHistory(query, timeout=remaining(), metadata=up.metadata())
    return _json(
        {
            "artist": artist,
            "total_generations": reply.total_generations,
            "history": [convert.history_entry(g) for g in reply.generations],
            "next_page_token": reply.next_page_token,
        }
    )


@router.get(
    "/artists/{artist:name}/profile",
    response_model=models.ProfileRead,
    responses=_errors(404, 409),
    summary="An artist's style profile, through the cache gateway",
)
async def profile(
    request: Request,
    artist: ArtistName,
    include_embedding: bool = False,
    min_version: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Read your own write: the saved version")
    ] = 0,
) -> Response:
    query = gateway_pb.GetStyleProfileRequest(artist_name=artist, min_version=min_version)
    up = _upstreams(request)
    reply = await up.gateway.GetStyleProfile(query, timeout=remaining(), metadata=up.metadata())
    return _json(convert.profile_read(reply, include_embedding=include_embedding))


@router.get(
    "/artists",
    response_model=models.ArtistPage,
    responses=_errors(),
    summary="Artists, a page at a time",
)
async def artists(
    request: Request,
    status: Annotated[models.ResearchStatusName | None, Query()] = None,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    page_token: Annotated[str, Query(max_length=4096)] = "",
) -> Response:
    query = store_pb.ListArtistsRequest(page_size=page_size, page_token=page_token)
    if status is not None:
        query.research_status = convert.STATUS_VALUES[status]
    up = _upstreams(request)
    reply = await up.store.ListArtists(query, timeout=remaining(), metadata=up.metadata())
    return _json(
        {
            "artists": [convert.artist(a) for a in reply.artists],
            "next_page_token": reply.next_page_token,
        }
    )


@router.post(
    "/generations",
    status_code=201,
    response_model=models.Generation,
    responses=_errors(404, 409, 413),
    summary="Record one generation",
)
async def record_generation(
    request: Request,
    body: Annotated[models.NewGeneration, Body()],
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Makes a retry safe (AIP-155): a repeat within 24 hours records "
            "nothing and returns the first answer; reusing a key for a different body is 409.",
            json_schema_extra=documented(models.REQUEST_ID_PATTERN),
        ),
    ] = None,
) -> Response:
    # A key of its own when the client sent none: the channel's retries must not record twice.
    request_id = idempotency_key or new_request_id()
    up = _upstreams(request)
    reply = await up.analytics.RecordGeneration(
        convert.record_request(body, request_id), timeout=remaining(), metadata=up.metadata()
    )
    return _json(convert.generation(reply.generation), status=201)
