"""Typed gRPC clients of Stylebase's profile store, similarity, analytics and cache gateway.

The messages are the generated ones, from the `stylebase` package beside this one."""

from stylebase_client.base import AsyncClient, SyncClient
from stylebase_client.clients import (
    AnalyticsClient,
    AsyncAnalyticsClient,
    AsyncCacheGatewayClient,
    AsyncProfileStoreClient,
    AsyncSimilarityClient,
    CacheGatewayClient,
    ProfileStoreClient,
    SimilarityClient,
)
from stylebase_client.config import RETRY_POLICY, Kind, Tls

__all__ = [
    "RETRY_POLICY",
    "AnalyticsClient",
    "AsyncAnalyticsClient",
    "AsyncCacheGatewayClient",
    "AsyncClient",
    "AsyncProfileStoreClient",
    "AsyncSimilarityClient",
    "CacheGatewayClient",
    "Kind",
    "ProfileStoreClient",
    "SimilarityClient",
    "SyncClient",
    "Tls",
]
