"""Progress on stderr: a rich bar with ETA when stderr is a terminal (or forced), and
nothing otherwise, so logs and tests stay clean."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .terminal_text import printable


class Reporter:
    def __init__(self, progress: Optional[Progress]) -> None:
        self._p = progress
        self._task = None

    # tensor names come from model files: escaped like every other name the CLI prints
    def start(self, description: str, total: float) -> None:
        if self._p is not None:
            self._task = self._p.add_task(printable(description), total=total, item="")

    def advance(self, amount: float, item: str = "") -> None:
        if self._p is not None and self._task is not None:
            self._p.update(self._task, advance=amount, item=printable(item))

    def log(self, message: str) -> None:
        if self._p is not None:
            self._p.console.print(printable(message), markup=False, highlight=False)


@contextmanager
def reporter(enabled: Optional[bool] = None) -> Iterator[Reporter]:
    """enabled=None: show a bar when stderr is a terminal."""
    console = Console(stderr=True, markup=False, highlight=False, emoji=False)  # tensor names are text
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Reporter(None)
        return
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[item]}", style="dim", markup=False)]
    with Progress(*columns, console=console, transient=False) as p:
        yield Reporter(p)
