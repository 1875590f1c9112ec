"""Run by the interpreter of a fresh venv that has only the stylebase-client wheel: one write
and reads on each of the four services, blocking and asyncio, with health; prints JSON."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2

import stylebase_client as sc
from stylebase.analytics.v1 import analytics_service_pb2 as an
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2 as cg
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as ps
from stylebase.similarity.v1 import similarity_service_pb2 as sim

CLIENTS = {
    "profile_store": (sc.ProfileStoreClient, sc.AsyncProfileStoreClient),
    "similarity": (sc.SimilarityClient, sc.AsyncSimilarityClient),
    "analytics": (sc.AnalyticsClient, sc.AsyncAnalyticsClient),
    "cache_gateway": (sc.CacheGatewayClient, sc.AsyncCacheGatewayClient),
}


def _embedding(i: int) -> list[float]:
    return [1.0 if j in (i, i + 1) else 0.01 for j in range(384)]


def _sync(targets: dict[str, str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"health": {}, "missing": {}}
    for service, (client_class, _) in CLIENTS.items():
        with client_class(targets[service]) as client:
            serving = client.check_health(timeout=10) == health_pb2.HealthCheckResponse.SERVING
            out["health"][service] = serving
            out["missing"][service] = _missing(client)
    names = [f"{prefix}{i}" for i in range(3)]
    with sc.ProfileStoreClient(targets["profile_store"]) as store:
        for i, name in enumerate(names):
            profile = common_pb2.StyleProfile(
                artist_name=name, text_description="client check", embedding=_embedding(i)
            )
            profile.quantitative_params.tempo_min = 80
            profile.quantitative_params.tempo_max = 100
            profile.quantitative_params.tempo_avg = 90
            store.save_style_profile(ps.SaveStyleProfileRequest(profile=profile))
        got, call = store.get_style_profile.with_call(
            ps.GetStyleProfileRequest(artist_name=names[0]), request_id=f"{prefix}req"
        )
        out["store_profile"] = got.profile.artist_name
        out["store_echoed_request_id"] = dict(call.trailing_metadata() or ()).get("x-request-id")
        listed, token = [], ""
        while True:
            page = store.list_artists(ps.ListArtistsRequest(page_size=100, page_token=token))
            listed += [a.name for a in page.artists if a.name.startswith(prefix)]
            if not (token := page.next_page_token):
                break
        out["store_listed"] = sorted(listed)
    with sc.SimilarityClient(targets["similarity"]) as similarity:
        found = similarity.find_similar_artists(
            sim.FindSimilarArtistsRequest(artist_name=names[0], limit=2)
        )
        out["similar"] = [a.artist_name for a in found.artists]
    with sc.AnalyticsClient(targets["analytics"]) as analytics:
        analytics.record_generation(
            an.RecordGenerationRequest(
                artist_name=names[0],
                provider_used="template",
                generation_time_ms=5,
                user_params=an.UserParams(bars=4, tempo=90, time_signature="4/4", variations=1),
            )
        )
        history = analytics.get_artist_history(an.GetArtistHistoryRequest(artist_name=names[0]))
        out["history"] = history.total_generations
    with sc.CacheGatewayClient(targets["cache_gateway"]) as gateway:
        cached = gateway.get_style_profile(cg.GetStyleProfileRequest(artist_name=names[1]))
        out["gateway_profile"] = cached.profile.artist_name
    return out


async def _async(targets: dict[str, str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"health": {}, "missing": {}}
    for service, (_, client_class) in CLIENTS.items():
        async with client_class(targets[service]) as client:
            status = await client.check_health(timeout=10)
            out["health"][service] = status == health_pb2.HealthCheckResponse.SERVING
            out["missing"][service] = _missing(client)
    async with sc.AsyncProfileStoreClient(targets["profile_store"]) as store:
        call = store.get_artist.start(
            ps.GetArtistRequest(name=f"{prefix}1"), request_id=f"{prefix}async"
        )
        out["store_artist"] = (await call).artist.name
        trailers = await call.trailing_metadata()
        out["store_echoed_request_id"] = dict(trailers or ()).get("x-request-id")
    async with sc.AsyncSimilarityClient(targets["similarity"]) as similarity:
        found = await similarity.find_similar_artists(
            sim.FindSimilarArtistsRequest(artist_name=f"{prefix}2", limit=1)
        )
        out["similar"] = [a.artist_name for a in found.artists]
    async with sc.AsyncAnalyticsClient(targets["analytics"]) as analytics:
        stats = await analytics.get_stats(an.GetStatsRequest())
        out["stats"] = MessageToDict(stats).get("totalGenerations")
    async with sc.AsyncCacheGatewayClient(targets["cache_gateway"]) as gateway:
        cache_stats = await gateway.get_cache_stats(cg.GetCacheStatsRequest())
        out["gateway_fetches"] = cache_stats.store_fetches
    return out


def _missing(client: sc.SyncClient | sc.AsyncClient) -> list[str]:
    """RPCs of the client's service (from the generated descriptors) that its METHODS table
    or its snake_case attributes lack."""
    rpcs = [m.name for m in descriptor_pool.Default().FindServiceByName(client.SERVICE).methods]
    snake = {name: re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() for name in rpcs}
    return [n for n in rpcs if n not in client.METHODS or not hasattr(client, snake[n])]


def main() -> None:
    targets, prefix = json.loads(sys.argv[1]), sys.argv[2]
    result = {
        "sync": _sync(targets, prefix),
        "async": asyncio.run(_async(targets, prefix)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
