"""The profile store's work: one transaction per call, invalidation after the commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store import artists, profiles
from services.profile_store.invalidation import Invalidation, Invalidator, enqueue
from services.profile_store.validation import ProfileInput, SourceInput
from shared import convert, pagination
from shared.db import idempotency
from shared.db.engine import Database
from shared.db.idempotency import Key
from shared.errors import Aborted, ArtistNotFound, NotFound
from shared.metrics import STYLE_PROFILE_SAVES
from shared.validation import uuid_value
from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as pb

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class SavedVersion:
    artist_name: str
    artist_id: str
    version: int


@dataclass(frozen=True)
class DeletedArtist:
    artist_id: str
    version: int
    profile_deleted: bool
    research_sources_deleted: int
    cache_invalidated: bool


class _Deadline:
    """The caller's deadline, so work after the commit knows how much time is left."""

    def __init__(self, time_left: float | None) -> None:
        self._at = None if time_left is None else time.monotonic() + time_left

    def left(self) -> float | None:
        return None if self._at is None else self._at - time.monotonic()


def _cursor(token: str, filters: str) -> tuple[Any, uuid.UUID] | None:
    cursor = pagination.decode(token, filters=filters)
    if cursor is None:
        return None
    return convert.from_timestamp(cursor.after_time), uuid_value(cursor.after_id, "page_token")


class ProfileRepository:
    """What the servicer and the demo loader call; invalidator None leaves it to the relay."""

    def __init__(self, db: Database, invalidator: Invalidator | None = None) -> None:
        self.db = db
        self.invalidator = invalidator
        self._pruner = idempotency.Pruner(db)

    async def _notify(self, events: Sequence[Invalidation], deadline: _Deadline) -> bool:
        if self.invalidator is None:
            return False
        return await self.invalidator.notify(events, deadline.left())

    async def get_or_create_artist(
        self, name: str, *, key: Key | None = None, time_left: float | None = None
    ) -> pb.GetOrCreateArtistResponse:
        async def create(session: AsyncSession) -> pb.GetOrCreateArtistResponse:
            # A concurrent delete can remove the row between the two statements; go again.
            for _ in range(3):
                row = await artists.create(session, name)
                if row is not None:
                    return pb.GetOrCreateArtistResponse(
                        artist=convert.artist_to_proto(row), created=True
                    )
                row = await artists.by_name(session, name)
                if row is not None:
                    return pb.GetOrCreateArtistResponse(
                        artist=convert.artist_to_proto(row), created=False
                    )
            raise Aborted(f"artist '{name}' was created and deleted concurrently; retry")

        return await self._once(key, pb.GetOrCreateArtistResponse, create, time_left)

    async def _once(
        self,
        key: Key | None,
        kind: type[M],
        write: Callable[[AsyncSession], Awaitable[M]],
        time_left: float | None,
    ) -> M:
        """write() in one transaction, at most once per request id; a repeat gets its answer."""

        async def work(session: AsyncSession) -> M:
            return await idempotency.once(session, key, kind, lambda: write(session))

        response = await self.db.run(work, time_left=time_left)
        self._logged(key)
        return response

    def _logged(self, key: Key | None) -> None:
        if key is not None:
            self._pruner.poke()

    async def get_artist(
        self,
        *,
        name: str | None = None,
        artist_id: uuid.UUID | None = None,
        time_left: float | None = None,
    ) -> common_pb2.Artist:
        async def work(session: AsyncSession) -> Any:
            if artist_id is not None:
                return await artists.by_id(session, artist_id)
            assert name is not None
            return await artists.by_name(session, name)

        row = await self.db.run(work, time_left=time_left)
        if row is None:
            if artist_id is not None:
                raise NotFound(
                    f"Artist with id '{artist_id}' not found",
                    reason=ArtistNotFound.reason,
                    metadata={"artist_id": str(artist_id)},
                )
            raise ArtistNotFound(name or "")
        return convert.artist_to_proto(row)

    async def list_artists(
        self, *, status: str | None, page_size: int, page_token: str, time_left: float | None
    ) -> tuple[list[common_pb2.Artist], str]:
        filters = pagination.filter_hash("artists", status)
        after = _cursor(page_token, filters)

        async def work(session: AsyncSession) -> list[Any]:
            return await artists.page(session, status=status, after=after, limit=page_size + 1)

        rows, token = pagination.cut(
            await self.db.run(work, time_left=time_left),
            page_size,
            filters=filters,
            key=lambda row: (row.id, row.created_at),
        )
        return [convert.artist_to_proto(r) for r in rows], token

    async def set_research_status(
        self, name: str, status: str, *, time_left: float | None = None
    ) -> common_pb2.Artist:
        async def work(session: AsyncSession) -> Any:
            return await artists.set_status(session, name, status)

        row = await self.db.run(work, time_left=time_left)
        if row is None:
            raise ArtistNotFound(name)
        return convert.artist_to_proto(row)

    async def delete_artist(self, name: str, *, time_left: float | None = None) -> DeletedArtist:
        deadline = _Deadline(time_left)

        async def work(session: AsyncSession) -> artists.Deleted:
            deleted = await artists.delete(session, name)
            if deleted is None:
                raise ArtistNotFound(name)
            await enqueue(session, [Invalidation(name, deleted.version, deleted=True)])
            return deleted

        deleted = await self.db.run(work, time_left=time_left)
        invalidated = await self._notify(
            [Invalidation(name, deleted.version, deleted=True)], deadline
        )
        return DeletedArtist(
            str(deleted.artist_id),
            deleted.version,
            deleted.profile_deleted,
            deleted.sources_deleted,
            invalidated,
        )

    async def save_profile(
        self,
        item: ProfileInput,
        *,
        expected_version: int | None = None,
        key: Key | None = None,
        time_left: float | None = None,
    ) -> pb.SaveStyleProfileResponse:
        deadline = _Deadline(time_left)
        name = item.artist_name

        async def save(session: AsyncSession) -> pb.SaveStyleProfileResponse:
            artist = (await profiles.upsert_artists(session, [item]))[name]
            artist_id = artist.proto.id
            row: Any
            if expected_version is None:
                row = await profiles.upsert_profile(session, item, artist_id)
            elif expected_version == 0:
                row = await profiles.create_profile(session, item, artist_id)
            else:
                row = await profiles.replace_profile(session, item, artist_id, expected_version)
            if row is None:
                what = "must not exist yet" if expected_version == 0 else "has another version"
                raise Aborted(
                    f"the profile of '{name}' {what} (expected_version {expected_version}); "
                    "read it again and retry"
                )
            await enqueue(session, [Invalidation(name, row.version)])
            # Stored so in the request log; amended below once the gateway acknowledged.
            return pb.SaveStyleProfileResponse(
                profile=profiles.profile_to_proto(row._mapping, name),
                artist=artist.proto,
                artist_created=artist.created,
                cache_invalidated=False,
            )

        async def work(session: AsyncSession) -> tuple[pb.SaveStyleProfileResponse, bool]:
            if key is not None:
                stored = await idempotency.claim(session, key, pb.SaveStyleProfileResponse)
                if stored is not None:
                    return stored, True
            response = await save(session)
            if key is not None:
                await idempotency.store(session, key, response)
            return response, False

        response, replayed = await self.db.run(work, time_left=time_left)
        if replayed:  # the first call saved, invalidated (or left it to the relay) and answered
            return response
        STYLE_PROFILE_SAVES.inc()
        self._logged(key)
        if await self._notify([Invalidation(name, response.profile.version)], deadline):
            response.cache_invalidated = True
            if key is not None:
                await idempotency.amend(self.db, key, response, time_left=deadline.left())
        return response

    async def batch_save(
        self, items: Sequence[ProfileInput], *, time_left: float | None = None
    ) -> tuple[list[SavedVersion], int]:
        """All or nothing; returns the versions in request order and how many artists are new."""
        deadline = _Deadline(time_left)

        async def work(session: AsyncSession) -> tuple[list[SavedVersion], int]:
            by_name = await profiles.upsert_artists(session, items)
            ids = [by_name[item.artist_name].proto.id for item in items]
            versions = await profiles.upsert_profiles(session, items, ids)
            saved = [
                SavedVersion(item.artist_name, artist_id, versions[artist_id])
                for item, artist_id in zip(items, ids, strict=True)
            ]
            await enqueue(session, [Invalidation(s.artist_name, s.version) for s in saved])
            return saved, sum(1 for a in by_name.values() if a.created)

        saved, created = await self.db.run(work, time_left=time_left)
        STYLE_PROFILE_SAVES.inc(len(saved))
        await self._notify([Invalidation(s.artist_name, s.version) for s in saved], deadline)
        return saved, created

    async def get_profile(
        self, name: str, *, time_left: float | None = None
    ) -> common_pb2.StyleProfile:
        rows = await self.db.fetch(profiles.GET_PROFILE, name, time_left=time_left)
        if not rows:
            raise ArtistNotFound(name)
        row = rows[0]
        if row["id"] is None:
            raise NotFound(
                f"Artist '{name}' has no style profile yet",
                reason="PROFILE_NOT_FOUND",
                metadata={"artist_name": name},
            )
        return profiles.profile_to_proto(row, name)

    async def add_research_source(
        self,
        name: str,
        item: SourceInput,
        *,
        key: Key | None = None,
        time_left: float | None = None,
    ) -> pb.AddResearchSourceResponse:
        async def add(session: AsyncSession) -> pb.AddResearchSourceResponse:
            artist = await artists.by_name(session, name)
            if artist is None:
                raise ArtistNotFound(name)
            row = await artists.add_source(session, artist.id, item)
            return pb.AddResearchSourceResponse(source=artists.source_to_proto(row))

        return await self._once(key, pb.AddResearchSourceResponse, add, time_left)

    async def list_research_sources(
        self,
        name: str,
        *,
        source_type: str | None,
        page_size: int,
        page_token: str,
        time_left: float | None = None,
    ) -> tuple[list[common_pb2.ResearchSource], str]:
        filters = pagination.filter_hash("research_sources", name, source_type)
        before = _cursor(page_token, filters)

        async def work(session: AsyncSession) -> list[Any]:
            artist = await artists.by_name(session, name)
            if artist is None:
                raise ArtistNotFound(name)
            return await artists.sources_page(
                session,
                artist_id=artist.id,
                source_type=source_type,
                before=before,
                limit=page_size + 1,
            )

        rows, token = pagination.cut(
            await self.db.run(work, time_left=time_left),
            page_size,
            filters=filters,
            key=lambda row: (row.id, row.collected_at),
        )
        return [artists.source_to_proto(r) for r in rows], token
