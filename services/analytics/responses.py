"""Analytics rows as messages: what the servicer returns and what the request log stores."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from services.analytics.history import HistoryRow
from services.analytics.requests import NewGeneration
from shared.convert import timestamp
from stylebase.analytics.v1 import analytics_service_pb2 as pb


def params(values: dict[str, Any]) -> pb.UserParams:
    return pb.UserParams(
        bars=int(values.get("bars", 0)),
        tempo=float(values.get("tempo", 0.0)),
        time_signature=str(values.get("time_signature", "")),
        variations=int(values.get("variations", 0)),
    )


def recorded(
    id_: uuid.UUID, artist_id: uuid.UUID | None, created_at: datetime, g: NewGeneration
) -> pb.Generation:
    """A generation just written: the request's values and what the database gave it."""
    return pb.Generation(
        id=str(id_),
        artist_id="" if artist_id is None else str(artist_id),
        artist_name=g.artist_name or "",
        provider_used=g.provider,
        generation_time_ms=g.generation_time_ms,
        tokens_used=g.tokens_used,
        cost_usd=g.cost_usd,
        user_params=params(json.loads(g.user_params_json)),
        output_files=json.loads(g.output_files_json),
        created_at=timestamp(created_at),
    )


def history_row(row: HistoryRow, artist_name: str) -> pb.Generation:
    return pb.Generation(
        id=str(row.id),
        artist_id="" if row.artist_id is None else str(row.artist_id),
        artist_name=artist_name,
        provider_used=row.provider_used,
        generation_time_ms=row.generation_time_ms,
        tokens_used=row.tokens_used,
        cost_usd=row.cost_usd,
        user_params=params(row.user_params),
        output_files=row.output_files,
        created_at=timestamp(row.created_at),
    )
