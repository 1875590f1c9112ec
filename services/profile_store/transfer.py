"""'stylebase import': profiles from a file, checked by the store's rules, a batch a transaction.

Each batch is validated first; its valid lines are then written in one transaction (a refused
line is reported with its number and does not hold back the others), and lines whose content
is already stored are skipped. The normal path writes with SaveStyleProfile's upserts and
outbox; the fast path (see bulk.py) COPYs new artists and builds the vector index once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile_store import bulk, checks, files, profiles
from services.profile_store.checks import Refused, Valid
from services.profile_store.invalidation import Invalidation, Invalidator, enqueue
from services.profile_store.resume import Position
from shared.db.engine import Database

Progress = Callable[[int, int], None]
Say = Callable[[str], None]

_STORED = text(
    """
    SELECT a.name, a.research_status, p.id AS profile_id, p.text_description,
           p.quantitative_params, p.midi_templates_json, p.embedding, p.confidence_score,
           p.sources_count
    FROM artists a LEFT JOIN style_profiles p ON p.artist_id = a.id
    WHERE a.name = ANY(CAST(:names AS text[]))
    """
)
_SET_STATUS = text(
    """
    UPDATE artists a SET research_status = u.status
    FROM unnest(CAST(:names AS text[]), CAST(:statuses AS text[])) AS u(name, status)
    WHERE a.name = u.name
    """
)
_PROFILE_COUNT = "SELECT count(*) FROM style_profiles"


@dataclass(frozen=True)
class Options:
    batch_size: int = 1000
    resume: bool = False
    # The fast path: a file of at least fast_min_lines into a store of at most fast_max_rows.
    fast_min_lines: int = 10_000
    fast_max_rows: int = 1_000
    maintenance_work_mem: str = "1GB"
    parallel_workers: int = 1
    # Processes that parse and check lines while the main one writes; 0: in the main one.
    check_workers: int = 2


@dataclass
class Summary:
    path: str
    imported: int = 0
    unchanged: int = 0
    refused: list[Refused] = field(default_factory=list)


def _same(stored: Any, valid: Valid) -> bool:
    item = valid.item
    return bool(
        stored.profile_id is not None
        and stored.research_status == valid.status
        and stored.text_description == item.text_description
        and stored.quantitative_params == json.loads(item.params_json)
        and (stored.midi_templates_json or []) == json.loads(item.midi_templates_json)
        and stored.embedding == item.embedding
        and stored.confidence_score == item.confidence_score
        and (stored.sources_count or {}) == json.loads(item.sources_count_json)
    )


async def _upsert(session: AsyncSession, batch: Sequence[Valid]) -> list[Invalidation]:
    """SaveStyleProfile's statements, for a batch."""
    items = [v.item for v in batch]
    by_name = await profiles.upsert_artists(session, items)
    ids = [by_name[item.artist_name].proto.id for item in items]
    versions = await profiles.upsert_profiles(session, items, ids)
    other = [v for v in batch if v.status != "cached"]  # the upsert set 'cached'
    if other:
        names = [v.item.artist_name for v in other]
        await session.execute(_SET_STATUS, {"names": names, "statuses": [v.status for v in other]})
    return [Invalidation(item.artist_name, versions[i]) for item, i in zip(items, ids, strict=True)]


def _writer(batch: Sequence[Valid], fast: bool) -> Any:
    async def work(session: AsyncSession) -> tuple[list[Invalidation], int]:
        names = [v.item.artist_name for v in batch]
        stored = {r.name: r for r in await session.execute(_STORED, {"names": names})}
        changed = [
            v
            for v in batch
            if not (v.item.artist_name in stored and _same(stored[v.item.artist_name], v))
        ]
        new = [v for v in changed if fast and v.item.artist_name not in stored]
        old = [v for v in changed if not (fast and v.item.artist_name not in stored)]
        events: list[Invalidation] = []
        if old:
            events += await _upsert(session, old)
        if new:
            events += await bulk.copy_new(session, [(v.item, v.status) for v in new])
        if events:
            # In the batch's transaction, as every save: a gateway's cached copy (or its
            # cached "not found" of a new artist) is dropped even if this process dies.
            await enqueue(session, events)
        return events, len(batch) - len(changed)

    return work


async def import_file(
    db: Database,
    invalidator: Invalidator,
    source: Path,
    options: Options,
    *,
    dsn: str,
    progress: Progress,
    say: Say,
) -> Summary:
    position = Position.for_resume(source) if options.resume else Position.fresh(source)
    interrupted = Position.stored(source)
    if interrupted is not None and not options.resume:
        # Starting over after an interrupted fast import: its index still has to be built.
        position.index_definition = interrupted.index_definition
    total = files.count_rows(source)
    stored_count = (await db.fetch(_PROFILE_COUNT))[0][0]
    left = total - position.line
    fast = position.index_definition is not None or (
        left >= options.fast_min_lines and stored_count <= options.fast_max_rows
    )
    if fast:
        path = (
            f"fast: COPY, then one build of the vector index ({left:,} lines >= "
            f"{options.fast_min_lines:,}, {stored_count:,} stored profiles <= "
            f"{options.fast_max_rows:,})"
        )
    else:
        path = (
            f"normal: SaveStyleProfile's upserts (fast path needs >= {options.fast_min_lines:,} "
            f"lines and <= {options.fast_max_rows:,} stored profiles; here {left:,} and "
            f"{stored_count:,})"
        )
    say(f"path: {path}")
    summary = Summary(path="fast" if fast else "normal")
    connection = await bulk.connect(dsn)
    try:
        if fast and position.index_definition is None:
            position.index_definition = await bulk.index_definition(connection)
            if position.index_definition is None:
                say(f"warning: no index {bulk.INDEX} to rebuild; run 'stylebase migrate'")
            position.save(source)
            await bulk.drop_index(connection)
        position.save(source)
        seen: dict[str, int] = {}
        started = time.perf_counter()
        progress(position.line, total)
        rows = files.read_rows(source, after_line=position.line, offset=position.offset)
        workers = options.check_workers if left > options.batch_size else 0
        async for batch, results in checks.checked(rows, options.batch_size, workers):
            valid: list[Valid] = []
            for checked in results:
                if isinstance(checked, Valid):
                    first = seen.setdefault(checked.item.artist_name, checked.line)
                    if first != checked.line:
                        name = checked.item.artist_name
                        checked = Refused(
                            checked.line, f"artist_name: '{name}' is on line {first} too"
                        )
                if isinstance(checked, Refused):
                    summary.refused.append(checked)
                else:
                    valid.append(checked)
            if valid:
                events, unchanged = await db.run(_writer(valid, fast))
                summary.imported += len(valid) - unchanged
                summary.unchanged += unchanged
                if invalidator.authority is not None:
                    # Without Redis here the outbox rows wait for the running store's relay.
                    await invalidator.notify(events, None)
            position.line, position.offset = batch[-1].number, batch[-1].next_offset
            position.save(source)
            progress(position.line, total)
        say(f"rows written in {time.perf_counter() - started:.1f} s")
        if position.index_definition is not None:
            started = time.perf_counter()
            await bulk.build_index(
                connection,
                position.index_definition,
                maintenance_work_mem=options.maintenance_work_mem,
                parallel_workers=options.parallel_workers,
            )
            say(
                f"vector index built in {time.perf_counter() - started:.1f} s "
                f"(maintenance_work_mem {options.maintenance_work_mem}, "
                f"{options.parallel_workers} parallel workers)"
            )
    finally:
        await connection.close()
    Position.clear(source)
    return summary
