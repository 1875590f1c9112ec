"""A session's HTTP API over real services, on a database of its own, seeded with the demo."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.profile_store.seed import load_profiles
from shared.db import migrate
from shared.embedded.postgres import EmbeddedPostgres
from shared.embedded.redis import RedisServer
from shared.settings import to_asyncpg_url
from stylebase.analytics.v1 import analytics_service_pb2 as analytics_pb
from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics_grpc
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from tests.faults.proxy import FaultProxy
from tests.harness import service_env
from tests.http_api.support import ApiProcess, Stack, start_api, start_services

DATABASE = "http_api"
# (provider, generation_time_ms, tokens, cost) of J Dilla's seeded generations, oldest first.
GENERATIONS = [
    ("anthropic", 1200, 900, 0.012),
    ("openai", 800, 700, 0.009),
    ("anthropic", 1500, 1100, 0.015),
    ("template", 40, 0, 0.0),
]


@pytest.fixture(scope="session")
def api_database(postgres: EmbeddedPostgres) -> str:
    postgres.psql(f'CREATE DATABASE "{DATABASE}"')
    url = to_asyncpg_url(postgres.url.rsplit("/", 1)[0] + f"/{DATABASE}")
    migrate.upgrade(url)
    return url


async def _seed(store_target: str, analytics_target: str) -> None:
    async with grpc.aio.insecure_channel(store_target) as channel:
        store = store_grpc.ProfileStoreServiceStub(channel)
        await store.BatchSaveStyleProfiles(
            store_pb.BatchSaveStyleProfilesRequest(profiles=load_profiles()), timeout=30
        )
    async with grpc.aio.insecure_channel(analytics_target) as channel:
        analytics = analytics_grpc.AnalyticsServiceStub(channel)
        for provider, ms, tokens, cost in GENERATIONS:
            await analytics.RecordGeneration(
                analytics_pb.RecordGenerationRequest(
                    artist_name="J Dilla",
                    provider_used=provider,
                    generation_time_ms=ms,
                    tokens_used=tokens,
                    cost_usd=cost,
                    user_params=analytics_pb.UserParams(
                        bars=4, tempo=92, time_signature="4/4", variations=2
                    ),
                    output_files=[f"out/{provider}.mid"],
                ),
                timeout=10,
            )


@pytest.fixture(scope="session")
def api_env(api_database: str, redis_server: RedisServer) -> dict[str, str]:
    return service_env(
        api_database, {"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "stylebase:http"}
    )


@pytest.fixture(scope="session")
def stack(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("http_api_logs")
    running = Stack(start_services(api_env, logs), ApiProcess(env={}))
    try:
        services = running.services
        asyncio.run(_seed(services["profile_store"].target, services["analytics"].target))
        for name, service in services.items():
            running.proxies[name] = FaultProxy(service.port).start()
        upstream = {f"{n.upper()}_TARGET": p.address for n, p in running.proxies.items()}
        running.api = start_api(api_env, upstream, logs)
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxies(stack: Stack) -> Iterator[dict[str, FaultProxy]]:
    """The proxies, let flow again after each test whatever it did to them."""
    yield stack.proxies
    for proxy in stack.proxies.values():
        proxy.resume()


@pytest.fixture(scope="session")
def base_url(stack: Stack) -> str:
    return stack.api.base_url


@pytest.fixture(scope="session")
def save_profile(stack: Stack) -> Callable[[str], None]:
    """Saves a profile straight to the store, as the research pipeline does."""
    template = load_profiles()[0]

    def save(name: str) -> None:
        profile = common_pb2.StyleProfile()
        profile.CopyFrom(template)
        profile.artist_name = name
        with grpc.insecure_channel(stack.services["profile_store"].target) as channel:
            store_grpc.ProfileStoreServiceStub(channel).SaveStyleProfile(
                store_pb.SaveStyleProfileRequest(profile=profile), timeout=10
            )

    return save
