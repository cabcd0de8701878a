"""The audit trail: one JSON line per security- or data-relevant event, separate from the operational log.

Events carry UIDs, peers, counts and timings, never patient names, IDs or birth dates: callers pass only
those fields, and :meth:`AuditLog.record` refuses keys that name PHI so a mistake fails in tests rather
than leaking in production.

Listeners (:meth:`AuditLog.subscribe`) see every event as it is recorded, also when the file is disabled:
the Prometheus metrics count audited events, so the trail and the counters always agree.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from samie_node.config import Settings

LOG = logging.getLogger("samie_node.audit")

_PHI_KEYS = frozenset({"patient_name", "patient_id", "patient_birth_date", "PatientName", "PatientID"})


class AuditLog:
    """Append-only JSON-lines audit file; thread-safe; a disabled log records nothing.

    Parameters
    ----------
    path
        The file to append to, or None to disable auditing.
    clock
        Wall-clock source (seconds since the epoch).
    """

    def __init__(self, path: Path | None, clock: Any = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    @classmethod
    def for_settings(cls, settings: Settings) -> AuditLog:
        """The node's audit trail as configured (``[audit]``): a file, or nothing when disabled."""
        return cls(settings.audit_path if settings.audit.enabled else None)

    @property
    def path(self) -> Path | None:
        """The file events go to, or None when auditing is disabled."""
        return self._path

    def subscribe(self, listener: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Call ``listener(event, fields)`` for every event from now on (in the recording thread; it must be
        quick and must not raise: an exception is logged and the event is still recorded)."""
        self._listeners.append(listener)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event; ``fields`` must be JSON-serialisable and free of PHI."""
        bad = _PHI_KEYS.intersection(fields)
        if bad:
            raise ValueError(f"audit fields must not carry PHI: {sorted(bad)}")
        for listener in self._listeners:
            try:
                listener(event, fields)
            except Exception:  # a broken listener must not cost the unit of work that recorded the event
                LOG.exception("audit listener failed for event=%s", event)
        if self._fd is None:
            return
        line = json.dumps({"time": round(self._clock(), 3), "event": event, **fields}, sort_keys=True, default=str)
        with self._lock:
            try:
                os.write(self._fd, (line + "\n").encode("utf-8"))
            except OSError as exc:
                # A full disk must not turn a refused instance into a crashed handler; the operational
                # log says the audit trail has a gap.
                LOG.error("audit record lost event=%s: %s", event, exc.strerror or exc)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
