"""The one rich progress bar of every long command (training, eval, caption extension, judging).

:func:`make_progress` is a bar with a ``detail`` text field (losses, failures, retries: whatever the
command wants to show); :func:`progress_bar` is the simple counting form used by the eval loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["make_progress", "progress_bar"]


def make_progress(
    enabled: bool,
    console: Console | None = None,
    *,
    label: str | None = None,
    detail: bool = True,
    elapsed: bool = False,
    transient: bool = False,
) -> Progress:
    """A bar: description (or a fixed bold ``label``), count, ``{task.fields[detail]}`` and the ETA.

    Every task added to it must set ``detail`` (when ``detail`` is on); ``console`` defaults to stderr.
    """
    columns = [
        TextColumn(f"[bold]{label}" if label is not None else "[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if detail:
        columns.append(TextColumn("{task.fields[detail]}"))
    if elapsed:
        columns += [TimeElapsedColumn(), TextColumn("ETA")]
    columns.append(TimeRemainingColumn())
    return Progress(
        *columns, console=console or Console(stderr=True), disable=not enabled, transient=transient
    )


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A transient counting bar; yields ``advance(count)``."""
    if not enabled:
        yield lambda _count: None
        return
    with make_progress(True, Console(), detail=False, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)
