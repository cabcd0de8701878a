"""Several studies in flight at once, cut into chunks of images, the smallest study first.

Why chunks: a 300-slice CT is hundreds of model runs. Handed to the engine whole, it holds a worker for
minutes, and a one-image ultrasound that arrives meanwhile waits for all of it. Cut into chunks of
``engine.chunk_images`` images, the CT spreads over every worker, and between two chunks the scheduler
can start another study's.

Which chunk next: the one of the study with the fewest images left (shortest remaining work first),
ties by arrival. A 1-image study therefore waits for at most the chunks already running, never for a
whole large study; a large study still gets every worker whenever no smaller one waits. Round-robin
between studies would also bound the wait, but makes a burst of small studies wait behind one chunk of
the CT each; smallest-first finishes them first, which is what the people waiting for them want. A
steady stream of small studies faster than the engine could starve a large one; such a node is
overloaded anyway and its queue grows whatever the order (``status`` shows it).

The node reads each chunk's files when the chunk is handed over (not when the study arrives), so memory
holds only the chunks in flight. A chunk whose worker died is handed out again (at most
``engine.max_chunk_attempts`` times when the worker died under it; without limit when the whole engine
was unreachable); results are put back together in the order of the study's images, whatever order the
chunks finished in.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from samie_node.config import Settings
from samie_node.engine.backend import ChunkDone, ChunkFailed, ChunkLost, ChunkOutcome, ChunkTask, Engine
from samie_node.engine.infer import ChunkResult, FramePrompt, Inference, SourceImage, assemble, cut_chunks
from samie_node.engine.selection import Candidate
from samie_node.errors import SamieNodeError
from samie_node.timing import StageTimer

LOG = logging.getLogger("samie_node.scheduler")


@dataclass
class _Study:
    key: str
    images: list[Candidate]
    chunks: list[list[Candidate]]
    order: int
    timer: StageTimer
    pending: deque[int] = field(default_factory=deque)
    running: set[int] = field(default_factory=set)
    results: dict[int, ChunkResult] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    prompts: dict[str, tuple[FramePrompt, ...]] = field(default_factory=dict)

    @property
    def images_left(self) -> int:
        return sum(len(chunk) for index, chunk in enumerate(self.chunks) if index not in self.results)


@dataclass(frozen=True)
class FinishedStudy:
    """A study whose chunks all came back (``inference``), or that failed (``error``)."""

    key: str
    inference: Inference | None
    error: str
    timer: StageTimer


class Scheduler:
    """Hands the chunks of the studies it holds to an engine and puts their results back together.

    Parameters
    ----------
    engine
        The backend (local or Ray).
    settings
        Chunk size, studies in flight and attempts (``[engine]``).
    on_chunk
        Called with (study key, images) each time a chunk comes back, for progress bars.
    """

    def __init__(self, engine: Engine, settings: Settings, on_chunk: Callable[[str, int], None] | None = None) -> None:
        self._engine = engine
        self._settings = settings.engine
        self._on_chunk = on_chunk
        self._studies: dict[str, _Study] = {}
        self._tasks: dict[int, tuple[str, int]] = {}
        self._ids = itertools.count(1)
        self._arrivals = itertools.count()
        self._finished: list[FinishedStudy] = []

    def __len__(self) -> int:
        """Studies in flight."""
        return len(self._studies)

    def room(self) -> int:
        """How many more studies it takes (``engine.max_studies_in_flight``)."""
        return max(0, self._settings.max_studies_in_flight - len(self._studies))

    def add(
        self,
        key: str,
        images: Sequence[Candidate],
        timer: StageTimer | None = None,
        prompts: dict[str, tuple[FramePrompt, ...]] | None = None,
    ) -> None:
        """Take a study's selected images (a study with none finishes at once, with an empty result);
        ``prompts`` (SOP Instance UID -> box prompts) makes it a prompted job on those images."""
        chunks = cut_chunks(images, self._settings.chunk_images)
        study = _Study(key, list(images), chunks, next(self._arrivals), timer or StageTimer(), prompts=prompts or {})
        study.pending.extend(range(len(chunks)))
        self._studies[key] = study
        if not chunks:
            self._complete(study)

    def step(self, timeout_s: float) -> list[FinishedStudy]:
        """Hand out chunks while the engine has room, wait up to ``timeout_s`` for outcomes, and return the
        studies that finished."""
        self._dispatch()
        if self._studies:  # also with no chunk out (engine unavailable): collect() is where we wait
            for outcome in self._engine.collect(timeout_s):
                self._record(outcome)
        # No hand-out here: the caller may add a smaller study before the next step, and the local
        # engine runs whatever it was handed.
        finished, self._finished = self._finished, []
        return finished

    # -- internals -------------------------------------------------------------------------------------

    def _next_study(self) -> _Study | None:
        waiting = [study for study in self._studies.values() if study.pending]
        return min(waiting, key=lambda s: (s.images_left, s.order)) if waiting else None

    def _dispatch(self) -> None:
        while self._engine.capacity() > 0 and (study := self._next_study()) is not None:
            index = study.pending.popleft()
            task_id = next(self._ids)
            self._tasks[task_id] = (study.key, index)
            study.running.add(index)
            self._engine.submit(ChunkTask(task_id, tuple(_read(c, study.prompts) for c in study.chunks[index])))

    def _record(self, outcome: ChunkOutcome) -> None:
        key, index = self._tasks.pop(outcome.task_id, ("", -1))
        study = self._studies.get(key)
        if study is None:  # the study failed meanwhile; its other chunks' outcomes do not matter
            return
        study.running.discard(index)
        if isinstance(outcome, ChunkDone):
            LOG.debug(
                "chunk %d/%d of study_instance_uid=%s done by %s",
                index + 1,
                len(study.chunks),
                key,
                outcome.result.worker,
            )
            study.results[index] = outcome.result
            if self._on_chunk is not None:
                self._on_chunk(key, len(study.chunks[index]))
            if len(study.results) == len(study.chunks):
                self._complete(study)
        elif isinstance(outcome, ChunkFailed):
            self._fail(study, outcome.reason)
        else:
            self._retry(study, index, outcome)

    def _retry(self, study: _Study, index: int, lost: ChunkLost) -> None:
        attempts = study.attempts.get(index, 0) + (1 if lost.counts else 0)
        study.attempts[index] = attempts
        if attempts >= self._settings.max_chunk_attempts:
            self._fail(study, f"the engine lost a chunk of this study {attempts} times (last: {lost.reason})")
            return
        LOG.warning(
            "chunk %d/%d of study_instance_uid=%s lost (%s); handing it out again",
            index + 1,
            len(study.chunks),
            study.key,
            lost.reason,
        )
        study.pending.appendleft(index)

    def _complete(self, study: _Study) -> None:
        del self._studies[study.key]
        results = [study.results[index] for index in range(len(study.chunks))]
        inference = assemble(study.images, results, study.timer)
        self._finished.append(FinishedStudy(study.key, inference, "", study.timer))

    def _fail(self, study: _Study, reason: str) -> None:
        del self._studies[study.key]
        self._finished.append(FinishedStudy(study.key, None, reason, study.timer))


def _read(candidate: Candidate, prompts: dict[str, tuple[FramePrompt, ...]]) -> SourceImage:
    """A chunk image's bytes, read from the node's own files (empty when the file is gone: the engine
    then skips it as undecodable), with its box prompts if any."""
    uid = str(candidate.header.SOPInstanceUID)
    try:
        return SourceImage(uid, candidate.path.read_bytes(), prompts.get(uid, ()))
    except OSError as exc:
        LOG.warning("cannot read sop_instance_uid=%s: %s", uid, exc.strerror or type(exc).__name__)
        return SourceImage(uid, b"")


def run_one(
    engine: Engine,
    images: Sequence[Candidate],
    settings: Settings,
    timer: StageTimer,
    prompts: dict[str, tuple[FramePrompt, ...]] | None = None,
) -> Inference:
    """One study through the engine, waiting for it (``process_study`` and the tests).

    Raises
    ------
    SamieNodeError
        If the engine failed the study.
    """
    scheduler = Scheduler(engine, settings)
    scheduler.add("study", images, timer, prompts)
    while True:
        for finished in scheduler.step(timeout_s=1.0):
            if finished.inference is None:
                raise SamieNodeError(finished.error)
            return finished.inference
