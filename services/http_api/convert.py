"""gRPC messages to the API's JSON (see models.py for the shapes), and requests back."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.http_api.models import NewGeneration
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as gateway_pb
from stylebase.common.v1 import common_pb2

STATUS_NAMES = {
    common_pb2.RESEARCH_STATUS_UNSPECIFIED: "unspecified",
    common_pb2.RESEARCH_STATUS_PENDING: "pending",
    common_pb2.RESEARCH_STATUS_RESEARCHING: "researching",
    common_pb2.RESEARCH_STATUS_CACHED: "cached",
    common_pb2.RESEARCH_STATUS_FAILED: "failed",
}
STATUS_VALUES = {name: value for value, name in STATUS_NAMES.items() if name != "unspecified"}
SERVED_FROM = {
    gateway_pb.SERVED_FROM_IN_PROCESS: "in_process",
    gateway_pb.SERVED_FROM_REDIS: "redis",
    gateway_pb.SERVED_FROM_STORE: "store",
}


def timestamp(ts: Timestamp) -> str:
    """RFC 3339 in UTC with a Z, as protobuf's JSON mapping writes it."""
    return ts.ToJsonString()


def optional_timestamp(message: Any, field: str) -> str | None:
    return timestamp(getattr(message, field)) if message.HasField(field) else None


def user_params(message: analytics_pb.Generation) -> dict[str, Any] | None:
    if not message.HasField("user_params"):
        return None
    p = message.user_params
    return {
        "bars": p.bars,
        "tempo": p.tempo,
        "time_signature": p.time_signature,
        "variations": p.variations,
    }


def history_entry(g: analytics_pb.Generation) -> dict[str, Any]:
    return {
        "id": g.id,
        "provider_used": g.provider_used,
        "generation_time_ms": g.generation_time_ms,
        "tokens_used": g.tokens_used,
        "cost_usd": g.cost_usd,
        "user_params": user_params(g),
        "created_at": timestamp(g.created_at),
    }


def generation(g: analytics_pb.Generation) -> dict[str, Any]:
    return {
        **history_entry(g),
        "artist_id": g.artist_id,
        "artist_name": g.artist_name,
        "output_files": list(g.output_files),
    }


def stats(reply: analytics_pb.GetStatsResponse) -> dict[str, Any]:
    return {
        "total_generations": reply.total_generations,
        "avg_generation_time_ms": reply.avg_generation_time_ms,
        "total_cost_usd": reply.total_cost_usd,
        "provider_usage": dict(sorted(reply.provider_usage.items())),
        "avg_cost_per_generation": reply.avg_cost_per_generation,
        "cached_artists": reply.cached_artists,
        "p50_generation_time_ms": reply.p50_generation_time_ms,
        "p95_generation_time_ms": reply.p95_generation_time_ms,
        "providers": [
            {
                "provider": p.provider,
                "generations": p.generations,
                "avg_generation_time_ms": p.avg_generation_time_ms,
                "avg_cost_usd": p.avg_cost_usd,
                "total_cost_usd": p.total_cost_usd,
            }
            for p in reply.providers
        ],
        "total_tokens": reply.total_tokens,
        "percentile_relative_error": reply.percentile_relative_error,
    }


def profile(p: common_pb2.StyleProfile, *, include_embedding: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id,
        "artist_id": p.artist_id,
        "artist_name": p.artist_name,
        "text_description": p.text_description,
        "quantitative_params": None,
        "midi_templates": list(p.midi_templates),
        "confidence_score": p.confidence_score,
        "sources_count": None,
        "created_at": optional_timestamp(p, "created_at"),
        "updated_at": optional_timestamp(p, "updated_at"),
        "version": p.version,
    }
    if p.HasField("quantitative_params"):
        q = p.quantitative_params
        out["quantitative_params"] = {
            "tempo_min": q.tempo_min,
            "tempo_max": q.tempo_max,
            "tempo_avg": q.tempo_avg,
            "swing_percent": q.swing_percent,
            "ghost_note_prob": q.ghost_note_prob,
            "syncopation_level": q.syncopation_level,
            "velocity_mean": q.velocity_mean,
            "velocity_std": q.velocity_std,
        }
    if p.HasField("sources_count"):
        c = p.sources_count
        out["sources_count"] = {
            "papers": c.papers,
            "articles": c.articles,
            "audio": c.audio,
            "midi": c.midi,
        }
    if include_embedding:
        out["embedding"] = list(p.embedding)
    return out


def profile_read(reply: gateway_pb.GetStyleProfileResponse, *, include_embedding: bool) -> Any:
    return {
        "profile": profile(reply.profile, include_embedding=include_embedding),
        "served_from": SERVED_FROM.get(reply.served_from, "store"),
        "stale": reply.stale,
        "age_seconds": reply.age.ToTimedelta().total_seconds(),
    }


def artist(a: common_pb2.Artist) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "research_status": STATUS_NAMES.get(a.research_status, "unspecified"),
        "last_updated": optional_timestamp(a, "last_updated"),
        "sources_count": a.sources_count,
        "confidence_score": a.confidence_score,
        "created_at": optional_timestamp(a, "created_at"),
    }


def record_request(body: NewGeneration, request_id: str) -> analytics_pb.RecordGenerationRequest:
    request = analytics_pb.RecordGenerationRequest(
        artist_name=body.artist_name,
        provider_used=body.provider_used,
        generation_time_ms=body.generation_time_ms,
        tokens_used=body.tokens_used,
        cost_usd=body.cost_usd,
        output_files=body.output_files,
        request_id=request_id,
    )
    u = body.user_params
    request.user_params.CopyFrom(
        analytics_pb.UserParams(
            bars=u.bars, tempo=u.tempo, time_signature=u.time_signature, variations=u.variations
        )
    )
    return request
