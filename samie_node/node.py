"""The running node: listener, study scheduler, worker and sender, started and stopped together.

``samie-node serve`` builds one :class:`Node` and calls :meth:`Node.run`. Each part is a thread with one
job; they talk only through the spool's index, so a restart picks up exactly where the last run stopped.
Servers beside the DICOM listener (the HTTP server of :mod:`samie_node.http`) start after it and stop
before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.errors import SpoolError
from samie_node.net.receive import Receiver, configure_pynetdicom, incoming_from_file
from samie_node.spool import Spool
from samie_node.status import EngineInfo

if TYPE_CHECKING:
    from samie_node.engine.backend import Engine

LOG = logging.getLogger("samie_node.node")


class Service(Protocol):
    """A background part of the node that runs until asked to stop."""

    name: str

    def run_once(self) -> bool:
        """Do one unit of work; return True if there was work (the loop then does not sleep)."""


class Server(Protocol):
    """A listener beside the DICOM one, started and stopped with the node."""

    name: str

    def start(self) -> tuple[str, int]:
        """Start serving; returns the bound address."""

    def stop(self) -> None:
        """Stop serving."""


@dataclass(frozen=True)
class Check:
    """One readiness condition: whether it holds, and what was seen."""

    name: str
    ok: bool
    detail: str


class Node:
    """Everything ``samie-node serve`` runs.

    Parameters
    ----------
    settings
        Validated settings.
    services
        Background services (worker, sender) built by the caller with their models and peers.
    engine
        Where the models run (local or Ray); the console, ``/readyz`` and the metrics describe it.
    on_stop
        Called once the loops have stopped (the engine's workers are shut down there).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        spool: Spool,
        audit: AuditLog,
        services: list[Service] | None = None,
        engine: Engine | None = None,
        on_stop: list[Callable[[], None]] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.audit = audit
        self.services = services or []
        self._engine = engine
        self._on_stop = on_stop or []
        self.servers: list[Server] = []
        self.started_at = time.time()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        configure_pynetdicom()
        self.receiver = Receiver(settings, spool, audit)

    def start(self) -> list[tuple[str, int]]:
        """Reconcile the spool with the disk, then start listening and the background loops."""
        started = time.monotonic()
        counts = self.spool.reconcile(incoming_from_file)
        LOG.info(
            "spool reconciled in %.0f ms: %s",
            (time.monotonic() - started) * 1000,
            " ".join(f"{k}={v}" for k, v in counts.items()),
        )
        bound = self.receiver.start()
        self._spawn("scheduler", self._schedule_once)
        for service in self.services:
            self._spawn(service.name, service.run_once)
        for server in self.servers:
            host, port = server.start()
            LOG.info("%s listening on %s:%d", server.name, host, port)
        self.started_at = time.time()
        self.audit.record("node_started", addresses=[f"{h}:{p}" for h, p in bound], **counts)
        return bound

    @property
    def engine(self) -> EngineInfo | None:
        """The engine as the console and ``/readyz`` describe it; None while no worker holds the models."""
        if self._engine is None:
            return None
        models = self._engine.models_info()
        if models is None:
            return None
        state = self._engine.state()
        return EngineInfo(
            segmenter=models.algorithm.name,
            classifier=", ".join(label.name for label in models.class_labels or ()),
            model_version=models.algorithm.model_version,
            device=models.device,
            backend=state.backend,
            available=state.available,
            detail=state.message,
        )

    def readiness(self) -> list[Check]:
        """What ``/readyz`` reports: listener bound, models loaded, index writable, disk above the floor."""
        listening = self.receiver.listening
        engine = self.engine
        checks = [
            Check("listener", bool(listening), ", ".join(f"{h}:{p}" for h, p, _tls in listening) or "not listening"),
            Check(
                "models",
                engine is not None and engine.available,
                f"{engine.model} on {engine.device} ({engine.backend}: {engine.detail})" if engine else "not loaded",
            ),
        ]
        try:
            self.spool.check_writable()
            checks.append(Check("index", True, "writable"))
        except SpoolError as exc:
            checks.append(Check("index", False, str(exc)))
        free, floor = self.spool.free_bytes(), self.settings.limits.disk_floor_bytes
        checks.append(Check("disk", free >= floor, f"{free} bytes free, floor {floor}"))
        return checks

    def _spawn(self, name: str, step: Callable[[], bool]) -> None:
        thread = threading.Thread(target=self._loop, args=(name, step), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(self, name: str, step: Callable[[], bool]) -> None:
        interval = self.settings.study.poll_interval_s
        while not self._stop.is_set():
            try:
                busy = step()
            except Exception:  # the one catcher per loop: log, pause, carry on
                LOG.exception("%s loop failed; continuing", name)
                busy = False
            if not busy:
                self._stop.wait(interval)

    def _schedule_once(self) -> bool:
        ready = self.spool.mark_quiet_studies_ready(self.settings.study.quiet_period_s)
        for study_instance_uid in ready:
            study = self.spool.study(study_instance_uid)
            LOG.info(
                "study ready study_instance_uid=%s instances=%d",
                study_instance_uid,
                study.instances if study else 0,
            )
            self.audit.record(
                "study_ready",
                study_instance_uid=study_instance_uid,
                instances=study.instances if study else 0,
            )
        return False

    def stop(self) -> None:
        """Stop listening and let the loops finish their current unit of work."""
        self._stop.set()
        for server in self.servers:
            server.stop()
        self.receiver.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        for callback in self._on_stop:
            callback()
        self.audit.record("node_stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stop.wait(1.0):
            pass
