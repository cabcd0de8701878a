"""The Ray backend as the node sees it: a child process that drives the cluster, and its outcomes.

The node never runs Ray's driver in its own process. A driver whose cluster goes away is ended by Ray
itself (its core worker exits when the cluster's control store stays unreachable), and the node must go
on receiving, keep its spool and index, and answer ``status`` whatever the cluster does. So the driver
lives in a child process (``python -m samie_node.engine.ray_host``) talked to through a socket pair:
chunks go down it as bytes (the child puts them in Ray's object store, so no shared file system is
needed), per-frame results come back. When the child ends (cluster stopped, unreachable, restarted),
every chunk it held is reported lost without counting against its study, the engine says it is
unavailable, and a new child tries again every ``engine.reconnect_interval_s``. The child ends itself
when the node's end of the socket closes or the node's process is gone (also while it waits for an
unreachable cluster), so a node killed with SIGKILL leaves no driver behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from samie_node.config import Settings
from samie_node.engine.backend import ChunkDone, ChunkFailed, ChunkLost, ChunkOutcome, ChunkTask, EngineState
from samie_node.engine.models import ModelsInfo

LOG = logging.getLogger("samie_node.engine.ray")


def describe_address(address: str) -> str:
    """The cluster as people read it in the log and ``status``."""
    return "a Ray instance started by the node on this machine" if not address else f"the Ray cluster at {address}"


class RayEngine:
    """Engine workers as Ray actors, driven from a child process (see the module docstring).

    Parameters
    ----------
    settings
        ``[engine]``: address, workers, CPUs and GPUs per worker, reconnect interval; the whole object
        goes to the workers, which load the models it describes.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._where = describe_address(settings.engine.ray_address)
        self._changed = threading.Condition()
        self._outcomes: list[ChunkOutcome] = []
        self._held: dict[int, ChunkTask] = {}
        self._workers = 0
        self._message = f"connecting to {self._where}"
        self._info: ModelsInfo | None = None
        self._ended = ""
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="ray-engine", daemon=True)
        self._supervisor.start()

    # -- the Engine protocol ---------------------------------------------------------------------------

    def models_info(self, wait_s: float = 0.0) -> ModelsInfo | None:
        """The models' identity as the first worker reported it, waiting up to ``wait_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._info is not None or self._closed.is_set(), timeout=wait_s)
            return self._info

    def capacity(self) -> int:
        """Ready workers not holding a chunk."""
        with self._changed:
            return max(0, self._workers - len(self._held)) if self._conn is not None else 0

    def submit(self, task: ChunkTask) -> None:
        """Send a chunk to the driver; if it has just gone, the chunk is reported lost."""
        with self._changed:
            conn = self._conn
            self._held[task.task_id] = task
        try:
            if conn is None:
                raise OSError("no engine process")
            conn.send(("run", task))
        except (OSError, ValueError) as exc:
            self._lose([task.task_id], f"engine process unreachable ({type(exc).__name__})")

    def collect(self, timeout_s: float) -> list[ChunkOutcome]:
        """Outcomes that came back, waiting up to ``timeout_s`` for the first."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._outcomes), timeout=timeout_s)
            outcomes, self._outcomes = self._outcomes, []
            return outcomes

    def state(self) -> EngineState:
        """Available while at least one worker is ready."""
        with self._changed:
            available = self._conn is not None and self._workers > 0
            return EngineState("ray", available, self._workers, self._message)

    def close(self) -> None:
        """Stop the driver (and, with ``ray_address = ""``, the Ray instance it started)."""
        self._closed.set()
        with self._changed:
            conn, process = self._conn, self._process
            self._changed.notify_all()
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        if process is not None:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=10)
        self._supervisor.join(timeout=10)

    # -- the child process -----------------------------------------------------------------------------

    def _start_driver(self) -> tuple[Connection, subprocess.Popen[bytes]]:
        ours, theirs = socket.socketpair()
        # A driver whose cluster's control store is gone ends after this many seconds (Ray's default is a
        # minute, during which the node would still count the dead cluster's workers as ready).
        environment = {"RAY_gcs_rpc_server_reconnect_timeout_s": "10", **os.environ}
        process = subprocess.Popen(
            [sys.executable, "-m", "samie_node.engine.ray_host", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=environment,
        )
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(("start", self._settings, self._info))
        return conn, process

    def _supervise(self) -> None:
        while not self._closed.is_set():
            conn, process = self._start_driver()
            with self._changed:
                self._conn, self._process, self._ended = conn, process, ""
            self._listen(conn)
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            with self._changed:
                self._conn, self._workers = None, 0
                self._message = self._ended or (
                    f"the engine's Ray driver ended (exit code {code}): {self._where} is not reachable"
                )
                lost = list(self._held)
                self._changed.notify_all()
            self._lose(lost, "the engine's Ray driver ended", counts=False)
            conn.close()
            if not self._closed.is_set():
                interval = self._settings.engine.reconnect_interval_s
                LOG.warning("ray engine: %s; trying again in %.0f s", self._message, interval)
                self._closed.wait(interval)

    def _listen(self, conn: Connection) -> None:
        """Read the driver's messages until it ends."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        with self._changed:
            if kind == "done":
                self._held.pop(message[1], None)
                self._outcomes.append(ChunkDone(message[1], message[2]))
            elif kind == "lost":
                self._held.pop(message[1], None)
                self._outcomes.append(ChunkLost(message[1], message[2], counts=True))
            elif kind == "failed":
                self._held.pop(message[1], None)
                self._outcomes.append(ChunkFailed(message[1], message[2]))
            elif kind == "workers":
                self._workers, self._message = message[1], message[2]
            elif kind == "info":
                self._info = message[1]
            elif kind == "ended":
                self._ended = message[1]
            self._changed.notify_all()

    def _lose(self, task_ids: list[int], reason: str, *, counts: bool = False) -> None:
        with self._changed:
            for task_id in task_ids:
                if self._held.pop(task_id, None) is not None:
                    self._outcomes.append(ChunkLost(task_id, reason, counts=counts))
            self._changed.notify_all()
