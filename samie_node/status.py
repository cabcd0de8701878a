"""Where every study stands: its state, its summary and each result's delivery, read from the index.

``samie-node status`` prints it (``--json`` for scripts); the web console shows the same objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from samie_node.spool import Spool
from samie_node.summary import StudySummary


@dataclass(frozen=True)
class EngineInfo:
    """The engine as the console, ``/readyz`` and ``samie_build_info`` describe it.

    ``backend`` says where the models run: ``local`` (this process). The Ray backend sets its own name
    here (``runtime.build_node`` fills this in from the loaded models and the engine settings).
    """

    segmenter: str
    classifier: str
    model_version: str
    device: str
    backend: str = "local"

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
