"""gRPC servicer of SimilarityService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.similarity.repository import SimilarityRepository
from services.similarity.search import Match, SearchFilter, Tuning, vector_literal
from shared import validation
from shared.convert import status_to_db
from shared.errors import FieldViolation, InvalidArgument
from stylebase.common.v1 import common_pb2
from stylebase.similarity.v1 import similarity_service_pb2 as pb
from stylebase.similarity.v1 import similarity_service_pb2_grpc as pb_grpc

LIMIT_DEFAULT, LIMIT_MAX = 5, 20
EF_SEARCH_MAX = 1000
# Bounds the size of one request's name lists (and so of the lookup it costs).
NAMES_MAX = 100
RECALL_SAMPLE_DEFAULT = 100
Context = grpc.aio.ServicerContext[Any, Any]


def _limit(value: int, field: str = "limit") -> int:
    return validation.bounded_int(value, field, default=LIMIT_DEFAULT, low=1, high=LIMIT_MAX)


def _filter(msg: pb.SimilarityFilter, field: str = "filter") -> SearchFilter:
    tempo_min = tempo_max = None
    if msg.HasField("tempo_min"):
        tempo_min = validation.finite_in_range(
            msg.tempo_min, f"{field}.tempo_min", *validation.FILTER_TEMPO_RANGE
        )
    if msg.HasField("tempo_max"):
        tempo_max = validation.finite_in_range(
            msg.tempo_max, f"{field}.tempo_max", *validation.FILTER_TEMPO_RANGE
        )
    if tempo_min is not None and tempo_max is not None and tempo_min > tempo_max:
        raise InvalidArgument.many(
            [
                FieldViolation(f"{field}.tempo_min", f"must not exceed {field}.tempo_max"),
                FieldViolation(f"{field}.tempo_max", f"must not be below {field}.tempo_min"),
            ]
        )
    status = None
    if msg.research_status != common_pb2.RESEARCH_STATUS_UNSPECIFIED:
        status = status_to_db(msg.research_status, f"{field}.research_status")
    return SearchFilter(tempo_min, tempo_max, status)


def _ef_search(value: int, field: str) -> int | None:
    """0 means the service default (None); otherwise pgvector's range, 1..1000."""
    if value == 0:
        return None
    if not 1 <= value <= EF_SEARCH_MAX:
        raise InvalidArgument(
            field, f"must be between 1 and {EF_SEARCH_MAX} (0 means the service default)"
        )
    return value


def _tuning(msg: pb.SearchOptions, field: str = "options") -> Tuning:
    return Tuning(_ef_search(msg.ef_search, f"{field}.ef_search"), msg.exact)


def _names(values: Sequence[str], field: str) -> list[str]:
    if len(values) > NAMES_MAX:
        raise InvalidArgument(field, f"must list at most {NAMES_MAX} names")
    names = [validation.artist_name(v, f"{field}[{i}]") for i, v in enumerate(values)]
    return list(dict.fromkeys(names))


def _artists(matches: list[Match]) -> list[pb.SimilarArtist]:
    return [
        pb.SimilarArtist(
            artist_id=str(m.artist_id), artist_name=m.artist_name, similarity=m.similarity
        )
        for m in matches
    ]


class SimilarityServicer(pb_grpc.SimilarityServiceServicer):
    def __init__(self, repository: SimilarityRepository, *, recall_sample_max: int = 200) -> None:
        self.repository = repository
        self.recall_sample_max = recall_sample_max

    async def FindSimilarArtists(
        self, request: pb.FindSimilarArtistsRequest, context: Context
    ) -> pb.FindSimilarArtistsResponse:
        matches = await self.repository.find_similar(
            artist_name=validation.artist_name(request.artist_name),
            limit=_limit(request.limit),
            search_filter=_filter(request.filter),
            tuning=_tuning(request.options),
            time_left=context.time_remaining(),
        )
        return pb.FindSimilarArtistsResponse(artists=_artists(matches))

    async def SearchByEmbedding(
        self, request: pb.SearchByEmbeddingRequest, context: Context
    ) -> pb.SearchByEmbeddingResponse:
        min_similarity = None
        if request.HasField("min_similarity"):
            min_similarity = validation.finite_in_range(
                request.min_similarity, "min_similarity", -1, 1
            )
        matches = await self.repository.search_by_embedding(
            vector=vector_literal(validation.embedding(request.embedding)),
            limit=_limit(request.limit),
            exclude_names=_names(request.exclude_names, "exclude_names"),
            min_similarity=min_similarity,
            search_filter=_filter(request.filter),
            tuning=_tuning(request.options),
            time_left=context.time_remaining(),
        )
        return pb.SearchByEmbeddingResponse(artists=_artists(matches))

    async def Recommend(
        self, request: pb.RecommendRequest, context: Context
    ) -> pb.RecommendResponse:
        positives = _names(request.positive_artists, "positive_artists")
        if not positives:
            raise InvalidArgument("positive_artists", "must name at least one artist")
        negatives = _names(request.negative_artists, "negative_artists")
        both = sorted(set(positives) & set(negatives))
        if both:
            raise InvalidArgument(
                "negative_artists", f"must not repeat a positive artist ('{both[0]}')"
            )
        matches = await self.repository.recommend(
            positives=positives,
            negatives=negatives,
            limit=_limit(request.limit),
            search_filter=_filter(request.filter),
            tuning=_tuning(request.options),
            time_left=context.time_remaining(),
        )
        return pb.RecommendResponse(artists=_artists(matches))

    async def MeasureRecall(
        self, request: pb.MeasureRecallRequest, context: Context
    ) -> pb.MeasureRecallResponse:
        high = self.recall_sample_max
        sample_size = validation.bounded_int(
            request.sample_size,
            "sample_size",
            default=min(RECALL_SAMPLE_DEFAULT, high),
            low=1,
            high=high,
        )
        k = validation.bounded_int(request.k, "k", default=10, low=1, high=100)
        report = await self.repository.measure_recall(
            sample_size=sample_size,
            k=k,
            ef_search=_ef_search(request.ef_search, "ef_search"),
            time_left=context.time_remaining(),
        )
        return pb.MeasureRecallResponse(
            recall=report.recall,
            sample_size=report.sample_size,
            k=report.k,
            ef_search=report.ef_search,
            index_latency_ms_mean=report.index_latency_ms_mean,
            exact_latency_ms_mean=report.exact_latency_ms_mean,
        )
