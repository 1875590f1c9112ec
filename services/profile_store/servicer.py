"""gRPC servicer of ProfileStoreService: proto in, proto out; the work is in the repository."""

from __future__ import annotations

from typing import Any

import grpc

from services.profile_store import validation
from services.profile_store.repository import ProfileRepository
from shared import convert
from shared import validation as rules
from shared.db.idempotency import key_of
from shared.errors import InvalidArgument
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ProfileStoreServicer(pb_grpc.ProfileStoreServiceServicer):
    def __init__(self, repository: ProfileRepository) -> None:
        self.repository = repository

    async def GetOrCreateArtist(
        self, request: pb.GetOrCreateArtistRequest, context: Context
    ) -> pb.GetOrCreateArtistResponse:
        name = rules.artist_name(request.name, "name")
        return await self.repository.get_or_create_artist(
            name, key=key_of(request), time_left=context.time_remaining()
        )

    async def GetArtist(
        self, request: pb.GetArtistRequest, context: Context
    ) -> pb.GetArtistResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "id":
            artist = await self.repository.get_artist(
                artist_id=rules.uuid_value(request.id, "id"), time_left=context.time_remaining()
            )
        elif lookup == "name":
            artist = await self.repository.get_artist(
                name=rules.artist_name(request.name, "name"), time_left=context.time_remaining()
            )
        else:
            raise InvalidArgument("lookup", "must set name or id")
        return pb.GetArtistResponse(artist=artist)

    async def ListArtists(
        self, request: pb.ListArtistsRequest, context: Context
    ) -> pb.ListArtistsResponse:
        status = None
        if request.research_status != common_pb2.RESEARCH_STATUS_UNSPECIFIED:
            status = convert.status_to_db(request.research_status)
        found, token = await self.repository.list_artists(
            status=status,
            page_size=rules.page_size(request.page_size),
            page_token=request.page_token,
            time_left=context.time_remaining(),
        )
        return pb.ListArtistsResponse(artists=found, next_page_token=token)

    async def DeleteArtist(
        self, request: pb.DeleteArtistRequest, context: Context
    ) -> pb.DeleteArtistResponse:
        name = rules.artist_name(request.artist_name)
        deleted = await self.repository.delete_artist(name, time_left=context.time_remaining())
        return pb.DeleteArtistResponse(
            artist_id=deleted.artist_id,
            version=deleted.version,
            profile_deleted=deleted.profile_deleted,
            research_sources_deleted=deleted.research_sources_deleted,
        )

    async def SetResearchStatus(
        self, request: pb.SetResearchStatusRequest, context: Context
    ) -> pb.SetResearchStatusResponse:
        name = rules.artist_name(request.artist_name)
        status = convert.status_to_db(request.research_status)
        artist = await self.repository.set_research_status(
            name, status, time_left=context.time_remaining()
        )
        return pb.SetResearchStatusResponse(artist=artist)

    async def SaveStyleProfile(
        self, request: pb.SaveStyleProfileRequest, context: Context
    ) -> pb.SaveStyleProfileResponse:
        item = validation.profile(request.profile)
        expected = None
        if request.HasField("expected_version"):
            if request.expected_version < 0:
                raise InvalidArgument("expected_version", "must not be negative")
            expected = request.expected_version
        return await self.repository.save_profile(
            item,
            expected_version=expected,
            key=key_of(request),
            time_left=context.time_remaining(),
        )

    async def GetStyleProfile(
        self, request: pb.GetStyleProfileRequest, context: Context
    ) -> pb.GetStyleProfileResponse:
        name = rules.artist_name(request.artist_name)
        profile = await self.repository.get_profile(name, time_left=context.time_remaining())
        return pb.GetStyleProfileResponse(profile=profile)

    async def BatchSaveStyleProfiles(
        self, request: pb.BatchSaveStyleProfilesRequest, context: Context
    ) -> pb.BatchSaveStyleProfilesResponse:
        items = validation.profiles(request.profiles)
        saved, created = await self.repository.batch_save(items, time_left=context.time_remaining())
        return pb.BatchSaveStyleProfilesResponse(
            saved=[
                pb.SavedProfileVersion(
                    artist_name=s.artist_name, artist_id=s.artist_id, version=s.version
                )
                for s in saved
            ],
            artists_created=created,
        )

    async def AddResearchSource(
        self, request: pb.AddResearchSourceRequest, context: Context
    ) -> pb.AddResearchSourceResponse:
        name = rules.artist_name(request.artist_name)
        item = validation.source(request.source)
        return await self.repository.add_research_source(
            name, item, key=key_of(request), time_left=context.time_remaining()
        )

    async def ListResearchSources(
        self, request: pb.ListResearchSourcesRequest, context: Context
    ) -> pb.ListResearchSourcesResponse:
        name = rules.artist_name(request.artist_name)
        source_type = None
        if request.source_type != common_pb2.SOURCE_TYPE_UNSPECIFIED:
            source_type = convert.source_type_to_db(request.source_type)
        sources, token = await self.repository.list_research_sources(
            name,
            source_type=source_type,
            page_size=rules.page_size(request.page_size),
            page_token=request.page_token,
            time_left=context.time_remaining(),
        )
        return pb.ListResearchSourcesResponse(sources=sources, next_page_token=token)
