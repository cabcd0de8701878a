"""Stage timings of one unit of work, in milliseconds, for the log, the index and the console."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Adds up the wall time spent in each named stage (a stage may run several times)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, stage: str, started: float) -> None:
        """Count the time since ``started`` (a ``time.perf_counter()`` value) towards ``stage``."""
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, started)

    def rounded(self) -> dict[str, float]:
        """The timings rounded to 0.1 ms."""
        return {stage: round(ms, 1) for stage, ms in self.ms.items()}
