"""Typed clients of the four gRPC services, blocking and asyncio: one attribute per RPC, in
snake_case, taking the request message and returning the response message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from stylebase.analytics.v1 import analytics_service_pb2_grpc as analytics
from stylebase.cache_gateway.v1 import cache_gateway_service_pb2_grpc as cache_gateway
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as profile_store
from stylebase.similarity.v1 import similarity_service_pb2_grpc as similarity
from stylebase_client.base import AsyncClient, Spec, SyncClient
from stylebase_client.calls import AsyncCall, Call
from stylebase_client.config import Kind, Tls

Options = Sequence[tuple[str, Any]]


class _ProfileStore(Spec):
    SERVICE = "stylebase.profile_store.v1.ProfileStoreService"
    METHODS: ClassVar[Mapping[str, Kind]] = {
        "GetOrCreateArtist": Kind.WRITE,
        "GetArtist": Kind.READ,
        "ListArtists": Kind.READ,
        "DeleteArtist": Kind.WRITE,
        "SetResearchStatus": Kind.WRITE,
        "SaveStyleProfile": Kind.WRITE,
        "GetStyleProfile": Kind.READ,
        "BatchSaveStyleProfiles": Kind.BATCH_WRITE,
        "AddResearchSource": Kind.WRITE,
        "ListResearchSources": Kind.READ,
    }


class ProfileStoreClient(_ProfileStore, SyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = profile_store.ProfileStoreServiceStub(self.channel)
        m = self.METHODS
        self.get_or_create_artist = Call(stub.GetOrCreateArtist, m["GetOrCreateArtist"])
        self.get_artist = Call(stub.GetArtist, m["GetArtist"])
        self.list_artists = Call(stub.ListArtists, m["ListArtists"])
        self.delete_artist = Call(stub.DeleteArtist, m["DeleteArtist"])
        self.set_research_status = Call(stub.SetResearchStatus, m["SetResearchStatus"])
        self.save_style_profile = Call(stub.SaveStyleProfile, m["SaveStyleProfile"])
        self.get_style_profile = Call(stub.GetStyleProfile, m["GetStyleProfile"])
        self.batch_save_style_profiles = Call(
            stub.BatchSaveStyleProfiles, m["BatchSaveStyleProfiles"]
        )
        self.add_research_source = Call(stub.AddResearchSource, m["AddResearchSource"])
        self.list_research_sources = Call(stub.ListResearchSources, m["ListResearchSources"])


class AsyncProfileStoreClient(_ProfileStore, AsyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = profile_store.ProfileStoreServiceStub(self.channel)
        m = self.METHODS
        self.get_or_create_artist = AsyncCall(stub.GetOrCreateArtist, m["GetOrCreateArtist"])
        self.get_artist = AsyncCall(stub.GetArtist, m["GetArtist"])
        self.list_artists = AsyncCall(stub.ListArtists, m["ListArtists"])
        self.delete_artist = AsyncCall(stub.DeleteArtist, m["DeleteArtist"])
        self.set_research_status = AsyncCall(stub.SetResearchStatus, m["SetResearchStatus"])
        self.save_style_profile = AsyncCall(stub.SaveStyleProfile, m["SaveStyleProfile"])
        self.get_style_profile = AsyncCall(stub.GetStyleProfile, m["GetStyleProfile"])
        self.batch_save_style_profiles = AsyncCall(
            stub.BatchSaveStyleProfiles, m["BatchSaveStyleProfiles"]
        )
        self.add_research_source = AsyncCall(stub.AddResearchSource, m["AddResearchSource"])
        self.list_research_sources = AsyncCall(stub.ListResearchSources, m["ListResearchSources"])


class _Similarity(Spec):
    SERVICE = "stylebase.similarity.v1.SimilarityService"
    METHODS: ClassVar[Mapping[str, Kind]] = {
        "FindSimilarArtists": Kind.READ,
        "SearchByEmbedding": Kind.READ,
        "Recommend": Kind.READ,
        "MeasureRecall": Kind.LONG_READ,
    }


class SimilarityClient(_Similarity, SyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = similarity.SimilarityServiceStub(self.channel)
        m = self.METHODS
        self.find_similar_artists = Call(stub.FindSimilarArtists, m["FindSimilarArtists"])
        self.search_by_embedding = Call(stub.SearchByEmbedding, m["SearchByEmbedding"])
        self.recommend = Call(stub.Recommend, m["Recommend"])
        self.measure_recall = Call(stub.MeasureRecall, m["MeasureRecall"])


class AsyncSimilarityClient(_Similarity, AsyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = similarity.SimilarityServiceStub(self.channel)
        m = self.METHODS
        self.find_similar_artists = AsyncCall(stub.FindSimilarArtists, m["FindSimilarArtists"])
        self.search_by_embedding = AsyncCall(stub.SearchByEmbedding, m["SearchByEmbedding"])
        self.recommend = AsyncCall(stub.Recommend, m["Recommend"])
        self.measure_recall = AsyncCall(stub.MeasureRecall, m["MeasureRecall"])


class _Analytics(Spec):
    SERVICE = "stylebase.analytics.v1.AnalyticsService"
    METHODS: ClassVar[Mapping[str, Kind]] = {
        "RecordGeneration": Kind.WRITE,
        "BatchRecordGenerations": Kind.BATCH_WRITE,
        "GetStats": Kind.READ,
        "GetArtistHistory": Kind.READ,
    }


class AnalyticsClient(_Analytics, SyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = analytics.AnalyticsServiceStub(self.channel)
        m = self.METHODS
        self.record_generation = Call(stub.RecordGeneration, m["RecordGeneration"])
        self.batch_record_generations = Call(
            stub.BatchRecordGenerations, m["BatchRecordGenerations"]
        )
        self.get_stats = Call(stub.GetStats, m["GetStats"])
        self.get_artist_history = Call(stub.GetArtistHistory, m["GetArtistHistory"])


class AsyncAnalyticsClient(_Analytics, AsyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = analytics.AnalyticsServiceStub(self.channel)
        m = self.METHODS
        self.record_generation = AsyncCall(stub.RecordGeneration, m["RecordGeneration"])
        self.batch_record_generations = AsyncCall(
            stub.BatchRecordGenerations, m["BatchRecordGenerations"]
        )
        self.get_stats = AsyncCall(stub.GetStats, m["GetStats"])
        self.get_artist_history = AsyncCall(stub.GetArtistHistory, m["GetArtistHistory"])


class _CacheGateway(Spec):
    SERVICE = "stylebase.cache_gateway.v1.CacheGatewayService"
    METHODS: ClassVar[Mapping[str, Kind]] = {
        "GetStyleProfile": Kind.READ,
        "GetCacheStats": Kind.READ,
        # Writes only cache copies of the store's profiles: a repeat leaves the same state.
        "WarmCache": Kind.LONG_READ,
    }


class CacheGatewayClient(_CacheGateway, SyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = cache_gateway.CacheGatewayServiceStub(self.channel)
        m = self.METHODS
        self.get_style_profile = Call(stub.GetStyleProfile, m["GetStyleProfile"])
        self.get_cache_stats = Call(stub.GetCacheStats, m["GetCacheStats"])
        self.warm_cache = Call(stub.WarmCache, m["WarmCache"])


class AsyncCacheGatewayClient(_CacheGateway, AsyncClient):
    def __init__(self, target: str, *, tls: Tls | None = None, options: Options = ()) -> None:
        super().__init__(target, tls=tls, options=options)
        stub = cache_gateway.CacheGatewayServiceStub(self.channel)
        m = self.METHODS
        self.get_style_profile = AsyncCall(stub.GetStyleProfile, m["GetStyleProfile"])
        self.get_cache_stats = AsyncCall(stub.GetCacheStats, m["GetCacheStats"])
        self.warm_cache = AsyncCall(stub.WarmCache, m["WarmCache"])
