"""Where long engine steps (training, enhancing a dataset) report their progress."""

from __future__ import annotations

from typing import Protocol

import rich.progress
from rich.console import Console


class Progress(Protocol):
    """Where long steps report; the CLI passes a rich progress bar, tests pass nothing."""

    def start(self, description: str, total: int) -> None:
        """Begin a step of ``total`` units."""
        ...

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units are done."""
        ...

    def note(self, message: str) -> None:
        """A line for the operator (epoch results and the like)."""
        ...


class SilentProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, description: str, total: int) -> None:
        """Ignore."""

    def advance(self, amount: int = 1) -> None:
        """Ignore."""

    def note(self, message: str) -> None:
        """Ignore."""


class RichProgress:
    """A :class:`Progress` drawn as a rich progress bar; use as a context manager."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar = rich.progress.Progress(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TimeElapsedColumn(),
            rich.progress.TimeRemainingColumn(),
            console=console,
        )
        self._task: rich.progress.TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def start(self, description: str, total: int) -> None:
        """Replace the current bar by a new one."""
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        """Move the current bar."""
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def note(self, message: str) -> None:
        """Print a line above the bar."""
        self._bar.console.print(message)
