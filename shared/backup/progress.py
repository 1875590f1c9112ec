"""Progress bars on stderr (only on a terminal: logs and pipes get plain lines or summaries)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

# done, total (bytes); total 0 when not known yet.
ProgressFn = Callable[[int, int], None]


def quiet(done: int, total: int) -> None:
    """For callers without a terminal: the background schedule, tests."""


@contextmanager
def bar(description: str) -> Iterator[ProgressFn]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        yield update


@contextmanager
def counter(description: str, *, every_seconds: float = 2.0) -> Iterator[ProgressFn]:
    """Items done of total: a bar on a terminal; through a pipe a plain line now and then
    (and at the end), so a log shows the import moving."""
    console = Console(stderr=True)
    if not console.is_terminal:
        last = [0.0, -1.0]  # when, and how many, the previous line said

        def line(done: int, total: int) -> None:
            now = time.monotonic()
            due = now - last[0] >= every_seconds or (total and done >= total)
            if due and done != last[1]:
                last[0], last[1] = now, done
                print(f"{description}: {done:,}/{total:,}", file=sys.stderr, flush=True)

        yield line
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        yield update
