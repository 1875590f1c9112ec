"""RPCs whose issue is still open: they answer UNIMPLEMENTED until implemented.

This is the one list; tests/test_rpc_coverage.py checks that every other RPC
is implemented and that every RPC here is not. It shrinks to nothing.
"""

from __future__ import annotations

PENDING_RPCS: frozenset[str] = frozenset(
    {
        "stylebase.profile_store.v1.ProfileStoreService/GetOrCreateArtist",
        "stylebase.profile_store.v1.ProfileStoreService/GetArtist",
        "stylebase.profile_store.v1.ProfileStoreService/ListArtists",
        "stylebase.profile_store.v1.ProfileStoreService/DeleteArtist",
        "stylebase.profile_store.v1.ProfileStoreService/SetResearchStatus",
        "stylebase.profile_store.v1.ProfileStoreService/SaveStyleProfile",
        "stylebase.profile_store.v1.ProfileStoreService/GetStyleProfile",
        "stylebase.profile_store.v1.ProfileStoreService/BatchSaveStyleProfiles",
        "stylebase.profile_store.v1.ProfileStoreService/AddResearchSource",
        "stylebase.profile_store.v1.ProfileStoreService/ListResearchSources",
        "stylebase.analytics.v1.AnalyticsService/RecordGeneration",
        "stylebase.analytics.v1.AnalyticsService/GetStats",
        "stylebase.analytics.v1.AnalyticsService/GetArtistHistory",
    }
)
