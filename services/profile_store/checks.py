"""Parsing and checking an import's lines, in worker processes ahead of the writes."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

from pydantic import ValidationError

from services.profile_store import files, validation
from shared.db.models import RESEARCH_STATUSES
from shared.errors import InvalidArgument

# Batches checked ahead of the one being written.
_AHEAD = 3


@dataclass(frozen=True)
class Refused:
    line: int
    reason: str


@dataclass(frozen=True)
class Valid:
    line: int
    item: validation.ProfileInput
    status: str


def _reason(error: Exception) -> str:
    if isinstance(error, InvalidArgument):
        return "; ".join(f"{v.field}: {v.description}" for v in error.violations)
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
    return str(error) or type(error).__name__


def _check(row: files.Row) -> Valid | Refused:
    try:
        line = row.parse()
        item = validation.profile(line.to_proto())
        if line.research_status not in RESEARCH_STATUSES:
            raise InvalidArgument(
                "research_status", f"must be one of {', '.join(RESEARCH_STATUSES)}"
            )
    except (ValidationError, InvalidArgument, ValueError) as error:
        return Refused(row.number, _reason(error))
    return Valid(row.number, item, line.research_status)


def check_rows(rows: list[files.Row]) -> list[Valid | Refused]:
    """The rules of each row; run in worker processes, so it must not need the others."""
    return [_check(row) for row in rows]


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the main process alone reports it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def checked(
    rows: Iterator[files.Row], size: int, workers: int
) -> AsyncIterator[tuple[list[files.Row], list[Valid | Refused]]]:
    """Batches with their checks, computed up to _AHEAD batches ahead in worker processes
    while the main one writes: parsing and the rules are the import's largest CPU cost."""
    if workers == 0:
        for batch in _batches(rows, size):
            yield batch, check_rows(batch)
        return
    loop = asyncio.get_running_loop()
    # forkserver, not fork: this process has threads and open connections by now.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, context, initializer=_ignore_interrupts) as pool:
        pending: deque[tuple[list[files.Row], asyncio.Future[list[Valid | Refused]]]] = deque()
        for batch in _batches(rows, size):
            pending.append((batch, loop.run_in_executor(pool, check_rows, batch)))
            if len(pending) > _AHEAD:
                done, future = pending.popleft()
                yield done, await future
        while pending:
            done, future = pending.popleft()
            yield done, await future


def _batches(rows: Iterator[files.Row], size: int) -> Iterator[list[files.Row]]:
    while batch := list(islice(rows, size)):
        yield batch
