"""'stylebase export': every profile (or those of one research status), by artist name.

One read-only repeatable-read transaction, streamed through a server-side cursor, so the file
is one consistent snapshot however long the export takes and memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.profile_store import bulk, files, vectors
from services.profile_store.lines import ProfileLine

_BATCH = 1000
_FROM = """
    FROM artists a JOIN style_profiles p ON p.artist_id = a.id
    WHERE $1::text IS NULL OR a.research_status = $1
"""
_ROWS = f"""
    SELECT a.name, a.research_status, p.text_description, p.quantitative_params,
           p.midi_templates_json, p.embedding, p.confidence_score, p.sources_count
    {_FROM} ORDER BY a.name
"""


def _json(value: str | None, empty: Any) -> Any:
    return empty if value is None else json.loads(value)


def _line(row: Any) -> ProfileLine:
    embedding = row["embedding"]
    return ProfileLine(
        artist_name=row["name"],
        research_status=row["research_status"],
        text_description=row["text_description"],
        quantitative_params=_json(row["quantitative_params"], None),
        midi_templates=_json(row["midi_templates_json"], []),
        embedding=[] if embedding is None else vectors.decode(embedding),
        confidence_score=row["confidence_score"],
        sources_count=_json(row["sources_count"], {}),
    )


async def export_file(
    dsn: str, target: Path, *, status: str | None, progress: Callable[[int, int], None]
) -> int:
    """Write the profiles to target (JSON Lines, or Parquet by its suffix); how many."""
    connection = await bulk.connect(dsn)
    written = 0
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            total: int = await connection.fetchval(f"SELECT count(*) {_FROM}", status)
            progress(0, total)
            with files.writer(target) as out:
                batch: list[ProfileLine] = []
                async for row in connection.cursor(_ROWS, status, prefetch=_BATCH):
                    batch.append(_line(row))
                    if len(batch) == _BATCH:
                        out.write(batch)
                        written += len(batch)
                        batch = []
                        progress(written, total)
                out.write(batch)
                written += len(batch)
            progress(written, total)
    finally:
        await connection.close()
    return written
