"""The running node: listener, study scheduler, worker and sender, started and stopped together.

``samie-node serve`` builds one :class:`Node` and calls :meth:`Node.run`. Each part is a thread with one
job; they talk only through the spool's index, so a restart picks up exactly where the last run stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.net.receive import Receiver, configure_pynetdicom, incoming_from_file
from samie_node.spool import Spool

LOG = logging.getLogger("samie_node.node")


class Service(Protocol):
    """A background part of the node that runs until asked to stop."""

    name: str

    def run_once(self) -> bool:
        """Do one unit of work; return True if there was work (the loop then does not sleep)."""


class Node:
    """Everything ``samie-node serve`` runs.

    Parameters
    ----------
    settings
        Validated settings.
    services
        Background services (worker, sender) built by the caller with their models and peers.
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
        on_stop: list[Callable[[], None]] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.audit = audit
        self.services = services or []
        self._on_stop = on_stop or []
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
        self.audit.record("node_started", addresses=[f"{h}:{p}" for h, p in bound], **counts)
        return bound

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
