"""An artist's generations, newest first, with keyset pagination on (created_at, id)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import pagination
from shared.convert import from_timestamp
from shared.db.engine import Database, positional
from shared.errors import ArtistNotFound
from shared.validation import uuid_value

MAX_ID = uuid.UUID(int=2**128 - 1)


@dataclass(frozen=True)
class HistoryRow:
    id: uuid.UUID
    artist_id: uuid.UUID | None
    provider_used: str
    generation_time_ms: int
    tokens_used: int
    cost_usd: float
    user_params: dict[str, Any]
    output_files: list[str]
    created_at: datetime


@dataclass(frozen=True)
class HistoryPage:
    artist_name: str
    rows: list[HistoryRow]
    total: int
    next_page_token: str


# One statement, so the count and the page come from one snapshot. The count is the
# counter the insert trigger keeps; the page walks ix_generation_history_artist_created
# backwards from the cursor, which later inserts (newer keys) cannot shift.
PAGE = """
    SELECT a.id AS artist_id, coalesce(c.generations, 0) AS total, g.*
    FROM artists a
    LEFT JOIN artist_generation_counts c ON c.artist_id = a.id
    LEFT JOIN LATERAL (
        SELECT h.id, h.provider_used, h.generation_time_ms, h.tokens_used, h.cost_usd,
               h.user_params, h.output_files, h.created_at
        FROM generation_history h
        WHERE h.artist_id = a.id
          AND (h.created_at, h.id) < (coalesce(CAST(:after_time AS timestamptz), 'infinity'),
                                      coalesce(CAST(:after_id AS uuid), :max_id))
        ORDER BY h.created_at DESC, h.id DESC
        LIMIT :fetch
    ) g ON true
    WHERE a.name = :name
    ORDER BY g.created_at DESC, g.id DESC
"""


def _filters(name: str) -> str:
    return pagination.filter_hash("analytics.GetArtistHistory", name)


async def artist_history(
    db: Database, *, name: str, limit: int, page_token: str, time_left: float | None
) -> HistoryPage:
    """One statement through Database.fetch: no transaction is needed for one snapshot."""
    cursor = pagination.decode(page_token, filters=_filters(name))
    after_time = from_timestamp(cursor.after_time) if cursor is not None else None
    after_id = cursor.after_id if cursor is not None else None
    if after_id is not None:
        uuid_value(after_id, "page_token")
    params = {
        "name": name,
        "after_time": after_time,
        "after_id": after_id,
        "max_id": MAX_ID,
        "fetch": limit + 1,
    }
    result = await db.fetch(*positional(PAGE, params), time_left=time_left)
    if not result:
        raise ArtistNotFound(name)
    found = [r for r in result if r["id"] is not None]
    page, token = pagination.cut(
        found, limit, filters=_filters(name), key=lambda r: (r["id"], r["created_at"])
    )
    rows = [
        HistoryRow(
            id=r["id"],
            artist_id=r["artist_id"],
            provider_used=r["provider_used"],
            generation_time_ms=r["generation_time_ms"],
            tokens_used=r["tokens_used"] or 0,
            cost_usd=r["cost_usd"] or 0.0,
            user_params=r["user_params"],
            output_files=list(r["output_files"] or []),
            created_at=r["created_at"],
        )
        for r in page
    ]
    return HistoryPage(name, rows, int(result[0]["total"]), token)
