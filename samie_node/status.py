"""Where every study stands: its state, its summary and each result's delivery, read from the index.

``samie-node status`` prints it (``--json`` for scripts); the web console shows the same objects.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from samie_node.spool import Spool
from samie_node.summary import StudySummary

if TYPE_CHECKING:  # the engine imports torch; ``samie-node status`` should start without it
    from samie_node.engine.backend import EngineState

#: Where the running node writes its engine's state for ``samie-node status`` (a separate process).
ENGINE_STATE_FILE = "engine-state.json"


@dataclass(frozen=True)
class EngineInfo:
    """The engine as the console, ``/readyz`` and ``samie_build_info`` describe it.

    ``backend`` says where the models run: ``local`` (this process) or ``ray``; ``available`` whether a
    worker can take work now, and ``detail`` why not or where it runs. ``classifier`` names its classes.
    """

    segmenter: str
    classifier: str
    model_version: str
    device: str
    backend: str = "local"
    available: bool = True
    detail: str = ""

    @property
    def model(self) -> str:
        """The models as one line: the segmenter, and the classifier when there is one."""
        return f"{self.segmenter} + {self.classifier}" if self.classifier else self.segmenter


@dataclass(frozen=True)
class OutputStatus:
    """One result's delivery to one destination."""

    sop_class_uid: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_error: str


@dataclass(frozen=True)
class StudyStatus:
    """One study as the index knows it, with its results."""

    study_instance_uid: str
    state: str
    instances: int
    accession_number: str
    reason: str
    summary: StudySummary | None
    outputs: list[OutputStatus]

    @property
    def sent(self) -> int:
        """Results delivered."""
        return sum(1 for output in self.outputs if output.state == "sent")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``status --json``)."""
        data = asdict(self)
        data["result"] = data.pop("summary") or {}
        return data


def study_statuses(spool: Spool) -> list[StudyStatus]:
    """Every study in the index, oldest first, with its outputs."""
    outputs: dict[str, list[OutputStatus]] = {}
    for output in spool.outputs():
        outputs.setdefault(output.study_instance_uid, []).append(
            OutputStatus(
                output.sop_class_uid,
                output.sop_instance_uid,
                output.destination,
                output.state,
                output.attempts,
                output.last_error,
            )
        )
    return [
        StudyStatus(
            study.study_instance_uid,
            study.state,
            study.instances,
            study.accession_number,
            study.reason,
            StudySummary.from_dict(study.result),
            outputs.get(study.study_instance_uid, []),
        )
        for study in spool.studies()
    ]


def write_engine_state(spool: Spool, state: EngineState) -> None:
    """Record the engine's state (the worker calls this when it changes)."""
    record = {**asdict(state), "since": time.time()}
    spool.write_atomically(spool.root / ENGINE_STATE_FILE, json.dumps(record, sort_keys=True).encode("utf-8"))


def read_engine_state(spool: Spool) -> dict[str, Any] | None:
    """The engine state the node last wrote, or None when it never ran (or the file is unreadable)."""
    try:
        data = json.loads((spool.root / ENGINE_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def engine_line(state: dict[str, Any] | None, waiting: int) -> str:
    """One line for people: the engine's backend, whether it works, and how many studies wait for it."""
    if state is None:
        return "engine: no state recorded (the node has not run here)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(state.get("since", 0))))
    if state.get("available"):
        return (
            f"engine: {state.get('backend')} available, {state.get('workers')} worker(s) since {since}; {waiting} ready"
        )
    return (
        f"engine: {state.get('backend')} UNAVAILABLE since {since}: {state.get('message')}; "
        f"{waiting} ready stud{'y waits' if waiting == 1 else 'ies wait'} in the spool"
    )
