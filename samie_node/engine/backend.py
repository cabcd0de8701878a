"""Where the models run: the engine backends the scheduler hands chunks of images to.

A backend takes :class:`ChunkTask` s (a few images of one study, as encoded bytes) and gives back one
:class:`ChunkOutcome` per task: done with its :class:`~samie_node.engine.infer.ChunkResult`, lost (the
worker died; the scheduler retries it), or failed (the models raised; the study fails). Two backends:

- :class:`LocalEngine`: the models in the node's process; it runs the one task it holds when asked for
  outcomes, so the caller's thread does the work and nothing else needs a lock;
- :class:`~samie_node.engine.ray_engine.RayEngine`: Ray actors, each holding the models, on this machine
  or on a cluster (the ``ray`` extra).

Both run :func:`~samie_node.engine.infer.run_chunk`, so a study gives the same masks on either.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Protocol

from samie_node.config import Settings
from samie_node.engine.infer import ChunkResult, SourceImage, run_chunk
from samie_node.engine.models import Models, ModelsInfo, load_models
from samie_node.errors import ConfigError, SamieNodeError

LOG = logging.getLogger("samie_node.engine.backend")


@dataclass(frozen=True)
class ChunkTask:
    """A chunk of one study's images, identified by a number unique within the node's run."""

    task_id: int
    images: tuple[SourceImage, ...]


@dataclass(frozen=True)
class ChunkDone:
    """The chunk ran; its per-frame results."""

    task_id: int
    result: ChunkResult


@dataclass(frozen=True)
class ChunkLost:
    """The chunk did not come back: its worker, its Ray node or the whole cluster went away.

    ``counts`` is False when the engine as a whole was unreachable (the chunk is not to blame and is
    retried without limit); True when its worker died under it (retried up to ``max_chunk_attempts``, so
    a study that kills every worker it meets, by running out of memory, fails instead of looping).
    """

    task_id: int
    reason: str
    counts: bool = True


@dataclass(frozen=True)
class ChunkFailed:
    """The models raised on the chunk; the study fails with this reason."""

    task_id: int
    reason: str


ChunkOutcome = ChunkDone | ChunkLost | ChunkFailed


@dataclass(frozen=True)
class EngineState:
    """What ``status`` and the log say about the engine.

    Attributes
    ----------
    backend
        ``local`` or ``ray``.
    available
        True when at least one worker can take a chunk now.
    workers
        Workers ready (holding the models).
    message
        Why it is not available, or where it runs.
    """

    backend: str
    available: bool
    workers: int
    message: str


class Engine(Protocol):
    """A backend as the scheduler uses it."""

    def models_info(self, wait_s: float = 0.0) -> ModelsInfo | None:
        """The models' identity, waiting up to ``wait_s`` for a worker to report it (None if none did)."""

    def capacity(self) -> int:
        """How many more chunks it takes now (0 while no worker is ready)."""

    def submit(self, task: ChunkTask) -> None:
        """Start a chunk; its outcome comes back from :meth:`collect`."""

    def collect(self, timeout_s: float) -> list[ChunkOutcome]:
        """Outcomes of finished chunks, waiting up to ``timeout_s`` for the first."""

    def state(self) -> EngineState:
        """Whether it can work, and why not."""

    def close(self) -> None:
        """Stop its workers."""


def chunk_failure(exc: BaseException) -> str:
    """The reason a study fails with when the models raise: the message of an error raised on purpose,
    else only the error's type (its message may hold anything)."""
    return str(exc) if isinstance(exc, SamieNodeError) else f"internal error in the engine ({type(exc).__name__})"


class LocalEngine:
    """The models in this process; one chunk at a time, run in the thread that collects it.

    Parameters
    ----------
    models
        Loaded once by the caller.
    settings
        The node's settings (limits and batch size for :func:`run_chunk`).
    """

    def __init__(self, models: Models, settings: Settings) -> None:
        self._models = models
        self._settings = settings
        self._task: ChunkTask | None = None

    def models_info(self, wait_s: float = 0.0) -> ModelsInfo:
        """The loaded models' identity (known at once)."""
        return self._models.info

    def capacity(self) -> int:
        """1 when no chunk is waiting to run."""
        return 0 if self._task is not None else 1

    def submit(self, task: ChunkTask) -> None:
        """Hold the chunk until :meth:`collect` runs it."""
        if self._task is not None:
            raise RuntimeError("the local engine runs one chunk at a time")
        self._task = task

    def collect(self, timeout_s: float) -> list[ChunkOutcome]:
        """Run the held chunk now (whatever the timeout: the work is here, there is nothing to wait for)."""
        task, self._task = self._task, None
        if task is None:
            return []
        try:
            return [ChunkDone(task.task_id, run_chunk(task.images, self._models, self._settings))]
        except Exception as exc:  # the one catcher of a chunk: the study fails, the node carries on
            LOG.exception("chunk failed task=%d", task.task_id)
            return [ChunkFailed(task.task_id, chunk_failure(exc))]

    def state(self) -> EngineState:
        """Always available."""
        return EngineState("local", True, 1, f"models in the node's process on {self._models.device}")

    def close(self) -> None:
        """Nothing to stop."""


def open_engine(settings: Settings) -> Engine:
    """The backend the settings ask for, with its models loaded (local) or its workers starting (Ray).

    Raises
    ------
    ConfigError
        If ``engine.backend = "ray"`` and Ray is not installed.
    ModelError
        If the local models cannot be loaded.
    """
    if settings.engine.backend == "local":
        return LocalEngine(load_models(settings), settings)
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "engine.backend = 'ray' needs Ray, which is not installed: pip install 'samie-node[ray]' "
            "(or use --engine local)"
        )
    from samie_node.engine.ray_engine import RayEngine, describe_address

    LOG.info(
        "ray engine: %d worker(s) start in the background on %s",
        settings.engine.workers,
        describe_address(settings.engine.ray_address),
    )
    return RayEngine(settings)
