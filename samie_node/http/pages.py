"""What each console page shows, gathered from the node, its index, its outbox and its audit trail.

Plain data for the templates; nothing here renders HTML. Patient name, ID and birth date (and the
accession number) are read only when ``http.show_phi`` is on.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from samie_node.node import Node
from samie_node.records import InstanceRecord, OutputRecord, StudyRecord
from samie_node.summary import StudySummary

SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")
PREVIEW_NAME = re.compile(r"^overlay-[A-Za-z0-9_.\-]{1,120}\.png$")
PAGE_SIZE = 50


class RecentErrors(logging.Handler):
    """The last warnings and errors of the node's own loggers, for the overview (logs carry no PHI)."""

    def __init__(self, size: int = 30) -> None:
        super().__init__(level=logging.WARNING)
        self.records: collections.deque[tuple[float, str, str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format is shown as its template
            message = str(record.msg)
        self.records.append((record.created, record.levelname, record.name, message[:400]))


@dataclass(frozen=True)
class DestinationView:
    label: str
    configured: bool
    kind: str
    counts: dict[str, int]
    last_sent: float | None
    last_error: str
    echo: str


def overview(node: Node, echoes: dict[str, str], errors: RecentErrors) -> dict[str, Any]:
    """The overview page: listeners, engine, queue, destinations, disk, uptime, recent errors."""
    studies, outputs, stored = node.spool.counts()
    outbox = node.spool.outbox_by_destination()
    configured = {peer.label: peer.kind for peer in node.settings.send.destinations}
    destinations = [
        DestinationView(
            label,
            label in configured,
            configured.get(label, "dimse"),
            outbox.get(label, ({}, None, ""))[0],
            outbox.get(label, ({}, None, ""))[1],
            outbox.get(label, ({}, None, ""))[2],
            echoes.get(label, ""),
        )
        for label in [*configured, *sorted(set(outbox) - set(configured))]
    ]
    return {
        "node": node,
        "listening": node.receiver.listening,
        "uptime_s": time.time() - node.started_at,
        "studies": studies,
        "outputs": outputs,
        "stored_bytes": stored,
        "free_bytes": node.spool.free_bytes(),
        "destinations": destinations,
        "errors": list(reversed(errors.records)),
        "checks": node.readiness(),
    }


def parse_day(text: str) -> float:
    """``YYYY-MM-DD`` as the epoch seconds of that day's start (local time); 0 for empty or invalid."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        return 0.0


def studies_page(node: Node, state: str, since: str, page: int) -> dict[str, Any]:
    """One page of studies, newest first, filtered by state and first-received day."""
    wanted: Any = state if state in ("receiving", "ready", "processing", "done", "failed") else None
    records, total = node.spool.studies_page(
        state=wanted, since=parse_day(since), limit=PAGE_SIZE, offset=max(page - 1, 0) * PAGE_SIZE
    )
    sent = {r.study_instance_uid: _sent(node.spool.outputs(r.study_instance_uid)) for r in records}
    return {
        "records": records,
        "sent": sent,
        "total": total,
        "page": max(page, 1),
        "pages": max(1, -(-total // PAGE_SIZE)),
        "state": wanted or "",
        "since": since if parse_day(since) else "",
    }


def _sent(outputs: list[OutputRecord]) -> tuple[int, int]:
    return sum(1 for o in outputs if o.state == "sent"), len(outputs)


@dataclass(frozen=True)
class SeriesView:
    series_instance_uid: str
    instances: int
    sop_classes: list[str]
    bytes: int


@dataclass
class StudyView:
    record: StudyRecord
    summary: StudySummary | None
    series: list[SeriesView]
    outputs: list[OutputRecord]
    previews: list[str]
    findings: list[tuple[int, str]]
    patient: dict[str, str] = field(default_factory=dict)


def _series(instances: list[InstanceRecord]) -> list[SeriesView]:
    grouped: dict[str, list[InstanceRecord]] = {}
    for instance in instances:
        grouped.setdefault(instance.series_instance_uid, []).append(instance)
    return [
        SeriesView(uid, len(items), sorted({i.sop_class_uid for i in items}), sum(i.size for i in items))
        for uid, items in grouped.items()
    ]


def sr_lines(dataset: Dataset, depth: int = 0, limit: int = 200) -> list[tuple[int, str]]:
    """The SR content tree as indented lines of "concept: value" (no header, so no patient data)."""
    lines: list[tuple[int, str]] = []
    for item in dataset.get("ContentSequence", []):
        if len(lines) >= limit:
            break
        name = item.ConceptNameCodeSequence[0].CodeMeaning if item.get("ConceptNameCodeSequence") else ""
        value_type = str(item.get("ValueType", ""))
        value = ""
        if value_type == "TEXT":
            value = str(item.get("TextValue", ""))
        elif value_type == "CODE" and item.get("ConceptCodeSequence"):
            value = str(item.ConceptCodeSequence[0].CodeMeaning)
        elif value_type == "NUM" and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            unit = (
                measured.MeasurementUnitsCodeSequence[0].CodeValue
                if measured.get("MeasurementUnitsCodeSequence")
                else ""
            )
            value = f"{float(measured.NumericValue):g} {unit}".strip()
        if value_type in ("TEXT", "CODE", "NUM", "CONTAINER"):
            lines.append((depth, f"{name}: {value}" if value else str(name)))
        lines.extend(sr_lines(item, depth + 1, limit - len(lines)))
    return lines


def study_view(node: Node, study_instance_uid: str) -> StudyView | None:
    """Everything the study page shows, or None for a study the index does not know."""
    record = node.spool.study(study_instance_uid)
    if record is None:
        return None
    instances = node.spool.instances(study_instance_uid)
    outputs = node.spool.outputs(study_instance_uid)
    folder = node.spool.outbox_dir / study_instance_uid / "previews"
    previews = sorted(p.name for p in folder.glob("overlay-*.png")) if folder.is_dir() else []
    findings: list[tuple[int, str]] = []
    sr = next((o for o in outputs if o.sop_class_uid in SR_CLASSES), None)
    if sr is not None:
        try:
            findings = sr_lines(pydicom.dcmread(sr.path))
        except Exception as exc:  # a damaged report must not take the page down
            findings = [(0, f"the report cannot be read ({type(exc).__name__})")]
    view = StudyView(record, StudySummary.from_dict(record.result), _series(instances), outputs, previews, findings)
    if node.settings.http.show_phi and instances:
        view.patient = _patient(instances[0].path, record)
    return view


def _patient(path: Path, record: StudyRecord) -> dict[str, str]:
    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID", "PatientBirthDate"]
        )
    except Exception:  # the header cannot be read: show nothing rather than fail
        return {}
    return {
        "Patient name": str(header.get("PatientName", "")),
        "Patient ID": str(header.get("PatientID", "")),
        "Birth date": str(header.get("PatientBirthDate", "")),
        "Accession number": record.accession_number,
    }


def failures(node: Node) -> dict[str, Any]:
    """Failed studies with their reason, and the dead letters."""
    return {
        "failed": node.spool.studies("failed"),
        "dead": node.spool.select_outputs(states=["dead"]),
        "retrying": node.spool.select_outputs(states=["retrying"]),
    }


def audit_events(path: Path | None, event: str, limit: int = 200, tail_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """The audit trail's last events, newest first, optionally of one kind; also the kinds seen."""
    if path is None or not path.exists():
        return {"events": [], "kinds": [], "event": event, "enabled": path is not None}
    with path.open("rb") as stream:
        size = stream.seek(0, 2)
        stream.seek(max(0, size - tail_bytes))
        lines = stream.read().decode("utf-8", errors="replace").splitlines()[1 if size > tail_bytes else 0 :]
    events = []
    for line in reversed(lines):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    kinds = sorted({str(e.get("event", "")) for e in events})
    chosen = [e for e in events if not event or e.get("event") == event][:limit]
    rows = [(e.pop("time", 0), e.pop("event", ""), e) for e in chosen]
    return {"events": rows, "kinds": kinds, "event": event, "enabled": True}
