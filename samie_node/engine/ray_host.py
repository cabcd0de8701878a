"""The Ray driver and its engine workers (runs in the child process :mod:`samie_node.engine.ray_engine`
starts; the only module of the node that imports Ray, with the actor class Ray workers import by name).

Each engine worker is an actor that loads the models once (on its GPU when ``gpus_per_worker`` gives it
one) and runs :func:`~samie_node.engine.infer.run_chunk` on chunks whose bytes arrive through Ray's object
store. The driver keeps ``engine.workers`` actors, hands each at most one chunk at a time (so a chunk
never queues behind another on a busy actor while an idle one waits), and reports back:

- ``("info", ModelsInfo)`` once, from the first worker up; a worker whose models differ from the node's
  is refused and stopped (output UIDs are derived from the models' identity);
- ``("workers", ready, message)`` whenever the number of ready workers changes;
- ``("done", task, ChunkResult)``, ``("failed", task, reason)`` when the models raised, or
  ``("lost", task, reason)`` when its actor or Ray node died; a new actor replaces the dead one, placed
  by Ray wherever resources are free (a worker that fails to start is retried every
  ``engine.reconnect_interval_s``, its reason reported);
- ``("ended", reason)`` before it exits because the cluster cannot be reached.

Actors are created with ``max_restarts=0``: the driver, not Ray, decides what to retry, so a chunk is
never run twice behind the node's back and a dead worker's chunk goes to a live one at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import ray
import ray.exceptions

from samie_node.config import Settings
from samie_node.engine.backend import ChunkTask, chunk_failure
from samie_node.engine.infer import ChunkResult, SourceImage, run_chunk
from samie_node.engine.models import Models, ModelsInfo, load_models

LOG = logging.getLogger("samie_node.engine.ray_host")

#: Ray errors that mean the worker (process, Ray node) went away, not that the models failed.
_WORKER_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OwnerDiedError,
)


class EngineWorker:
    """One engine worker: the models, loaded once, run on chunk after chunk (a Ray actor)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: Models = load_models(settings)
        self._label = f"{socket.gethostname()} pid {os.getpid()} on {self._models.device}"

    def describe(self) -> tuple[ModelsInfo, str]:
        """The models' identity, and where this worker runs (for the log)."""
        return self._models.info, self._label

    def run(self, images: tuple[SourceImage, ...]) -> ChunkResult:
        """Decode and run one chunk (the same function as the local backend)."""
        result = run_chunk(images, self._models, self._settings)
        result.worker = self._label
        return result


@dataclass
class _Actor:
    handle: Any
    pending: Any  # the describe() reference until the actor is ready, then None
    label: str = ""
    task: tuple[int, Any] | None = None  # (task id, result reference)


@dataclass
class _Driver:
    conn: Connection
    settings: Settings
    expected: ModelsInfo | None
    actors: list[_Actor] = field(default_factory=list)
    queue: deque[ChunkTask] = field(default_factory=deque)
    reported: tuple[int, str] = (-1, "")
    problem: str = ""
    next_start: float = 0.0

    def top_up(self) -> None:
        """Start actors up to ``engine.workers`` (after a pause when the last one could not start)."""
        engine = self.settings.engine
        options = {"num_cpus": engine.cpus_per_worker, "num_gpus": engine.gpus_per_worker, "max_restarts": 0}
        while len(self.actors) < engine.workers and time.monotonic() >= self.next_start:
            handle: Any = ray.remote(EngineWorker).options(**options).remote(self.settings)
            self.actors.append(_Actor(handle, handle.describe.remote()))

    def refuse(self, actor: _Actor, problem: str) -> None:
        """Drop a worker that cannot serve, say why, and wait before starting another."""
        LOG.error("%s", problem)
        self.problem = problem
        self.next_start = time.monotonic() + self.settings.engine.reconnect_interval_s
        self.drop(actor)

    def report(self) -> None:
        ready = sum(1 for actor in self.actors if actor.pending is None)
        wanted = self.settings.engine.workers
        if ready == 0 and self.problem:
            message = self.problem
        elif ready == 0:
            engine = self.settings.engine
            message = (
                "no engine worker is ready: the cluster has none yet, or no free "
                f"{engine.cpus_per_worker} CPU / {engine.gpus_per_worker} GPU for one (waiting)"
            )
        else:
            message = f"{ready} of {wanted} engine workers ready"
        if (ready, message) != self.reported:
            self.reported = (ready, message)
            self.conn.send(("workers", ready, message))

    def read_node(self, timeout_s: float) -> bool:
        """Take the node's messages; False when it asked to stop or has gone."""
        try:
            while self.conn.poll(timeout_s):
                timeout_s = 0.0
                message = self.conn.recv()
                if message[0] == "stop":
                    return False
                self.queue.append(message[1])
        except (EOFError, OSError):
            return False
        return True

    def dispatch(self) -> None:
        for actor in self.actors:
            if not self.queue:
                return
            if actor.pending is None and actor.task is None:
                task = self.queue.popleft()
                images = ray.put(task.images)  # the bytes travel through the object store
                actor.task = (task.task_id, actor.handle.run.remote(images))

    def wait(self, timeout_s: float) -> None:
        waiting = {actor.pending: actor for actor in self.actors if actor.pending is not None}
        waiting.update({actor.task[1]: actor for actor in self.actors if actor.task is not None})
        if not waiting:
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout_s, fetch_local=True)
        for reference in ready:
            actor = waiting[reference]
            if actor.pending is reference:
                self.came_up(actor)
            else:
                self.came_back(actor)

    def came_up(self, actor: _Actor) -> None:
        try:
            info, label = ray.get(actor.pending)
        except Exception as exc:  # a worker that cannot load the models, or died starting: said, retried later
            self.refuse(actor, f"an engine worker failed to start: {_reason(exc)}")
            return
        if self.expected is None:
            self.expected = info
            self.conn.send(("info", info))
        elif not self.expected.same_models(info):
            problem = f"engine worker on {label} has other models ({info.algorithm.model_version}) than the node"
            self.refuse(actor, f"{problem} ({self.expected.algorithm.model_version}): refused")
            return
        actor.pending, actor.label, self.problem = None, label, ""
        LOG.info("engine worker ready: %s", label)

    def came_back(self, actor: _Actor) -> None:
        assert actor.task is not None  # only actors holding a task are waited on for one
        task_id, reference = actor.task
        actor.task = None
        try:
            result = ray.get(reference)
        except _WORKER_LOST as exc:
            LOG.warning("engine worker %s lost with task %d: %s", actor.label, task_id, _reason(exc))
            self.conn.send(("lost", task_id, _reason(exc)))
            self.drop(actor)  # top_up() starts another wherever Ray finds room
            return
        except ray.exceptions.RayTaskError as exc:
            self.conn.send(("failed", task_id, chunk_failure(exc.cause if exc.cause is not None else exc)))
            return
        self.conn.send(("done", task_id, result))

    def drop(self, actor: _Actor) -> None:
        self.actors.remove(actor)
        with contextlib.suppress(Exception):  # already gone with its node
            ray.kill(actor.handle)


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def connect(settings: Settings) -> None:
    """Join the configured cluster, or start a Ray instance on this machine: no dashboard (so no job API),
    and the loopback node address, so no other machine joins it (its servers still listen on every
    interface: README, "Scaling out")."""
    engine = settings.engine
    common: dict[str, Any] = {"namespace": "samie-node", "log_to_driver": True, "logging_level": logging.WARNING}
    if engine.ray_address:
        ray.init(address=engine.ray_address, **common)
        return
    ray.init(
        include_dashboard=False,
        object_store_memory=engine.ray_object_store_mb * 1024 * 1024 or None,
        _node_ip_address="127.0.0.1",
        **common,
    )


def serve_engine(conn: Connection) -> None:
    """The child process: connect, keep the workers, run chunks until the node stops or the cluster goes.

    The node's first message gives the settings and the models it expects (None before any worker
    reported them).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _, settings, expected = conn.recv()
    except (EOFError, OSError):
        return
    address = settings.engine.ray_address or "a Ray instance on this machine"
    try:
        connect(settings)
    except Exception as exc:  # unreachable, refused, wrong version: the node waits and tries again
        conn.send(("ended", f"cannot reach {address}: {_reason(exc)}"))
        return
    driver = _Driver(conn, settings, expected)
    try:
        while driver.read_node(0.0 if driver.queue else 0.05):
            driver.top_up()
            driver.dispatch()
            driver.report()
            driver.wait(0.2)
    except (EOFError, OSError):
        pass  # the node went away: nothing to report to
    finally:
        started = time.monotonic()
        ray.shutdown()
        LOG.info("ray driver stopped in %.1f s", time.monotonic() - started)


def end_with_parent(parent_pid: int) -> None:
    """Exit when the node's process is gone, even while blocked in ``ray.init`` on an unreachable cluster
    (the socket's end of file is not read then)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    # Run the module's own copy under its package name, so Ray workers import EngineWorker by that name.
    from samie_node.engine.ray_host import end_with_parent as watch_parent
    from samie_node.engine.ray_host import serve_engine as serve

    watch_parent(int(sys.argv[2]))
    serve(Connection(int(sys.argv[1])))
