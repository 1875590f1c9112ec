"""Progress bars on stderr (only on a terminal: logs and pipes get the summary lines alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
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
