"""Offline processing of files and folders (``samie-node process``): no PACS, no spool.

Files are grouped into studies by Study Instance UID; each study goes through the same pipeline as a
pushed one, and its SEG, SR, overlays and PNG previews are written to ``OUT/<StudyInstanceUID>/``, and
optionally sent to a destination. A ``result.json`` written last marks a study done for a model version:
a re-run skips it unless forced, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom

from samie_node.config import Peer, Settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates
from samie_node.engine.models import Models
from samie_node.errors import SamieNodeError
from samie_node.files import write_atomically
from samie_node.net.send import calling_ae_title, store_files
from samie_node.pipeline import StudyResult, process_study
from samie_node.previews import write_previews
from samie_node.uids import is_valid_uid

LOG = logging.getLogger("samie_node.batch")

RESULT_FILE = "result.json"


@dataclass
class StudyOutcome:
    """What happened to one study of the batch."""

    study_instance_uid: str
    state: Literal["done", "skipped", "failed"]
    files: int
    outputs: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    sent: bool | None = None


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Every file under the given files and folders, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path


def group_by_study(paths: Sequence[Path]) -> tuple[dict[str, list[Path]], int]:
    """Files grouped by Study Instance UID; also the number of files that are not usable DICOM."""
    studies: dict[str, list[Path]] = {}
    unusable = 0
    for path in iter_files(paths):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            uid = str(header.StudyInstanceUID)
        except Exception:  # not DICOM, or no study UID: reported as a count
            unusable += 1
            continue
        if not is_valid_uid(uid):
            unusable += 1
            continue
        studies.setdefault(uid, []).append(path)
    return studies, unusable


def write_result(result: StudyResult, folder: Path) -> tuple[list[Path], list[Path]]:
    """Write the study's DICOM outputs and PNG previews; returns (dicom paths, preview paths)."""
    written = []
    for output in result.outputs:
        path = folder / f"{output.kind}-{output.sop_instance_uid}.dcm"
        write_atomically(path, encode_file(output.dataset))
        written.append(path)
    previews = write_previews(result.previews, folder / "previews")
    return written, previews


def process_paths(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    models: Models,
    templates: Templates,
    settings: Settings,
    destination: Peer | None = None,
    force: bool = False,
    on_study: Callable[[StudyOutcome], None] | None = None,
) -> tuple[list[StudyOutcome], int]:
    """Process every study found under ``paths``; returns the outcomes and the count of unusable files."""
    studies, unusable = group_by_study(paths)
    outcomes = []
    for study_uid, files in studies.items():
        outcome = _process_one(study_uid, files, out_dir, models, templates, settings, destination, force)
        outcomes.append(outcome)
        if on_study is not None:
            on_study(outcome)
    return outcomes, unusable


def _process_one(
    study_uid: str,
    files: list[Path],
    out_dir: Path,
    models: Models,
    templates: Templates,
    settings: Settings,
    destination: Peer | None,
    force: bool,
) -> StudyOutcome:
    folder = out_dir / study_uid
    marker = folder / RESULT_FILE
    model_version = models.algorithm.model_version
    if marker.exists() and not force:
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("model_version") == model_version:
            return StudyOutcome(
                study_uid,
                "skipped",
                len(files),
                previous.get("outputs", []),
                previous.get("previews", []),
                previous.get("summary", {}),
            )
    try:
        result = process_study(
            files,
            models,
            templates,
            settings,
            overlays_for_destinations=bool(destination and destination.secondary_capture),
        )
        written, previews = write_result(result, folder)
    except SamieNodeError as exc:
        LOG.warning("study failed study_instance_uid=%s: %s", study_uid, exc)
        return StudyOutcome(study_uid, "failed", len(files), error=str(exc))
    outcome = StudyOutcome(
        study_uid,
        "done",
        len(files),
        [str(p) for p in written],
        [str(p) for p in previews],
        result.summary.to_dict(),
    )
    if destination is not None:
        try:
            to_send = [
                p
                for p, o in zip(written, result.outputs, strict=True)
                if o.for_all_destinations or destination.secondary_capture
            ]
            store_files(
                destination, to_send, calling_ae_title=calling_ae_title(settings), timeout_s=settings.send.timeout_s
            )
            outcome.sent = True
        except SamieNodeError as exc:
            outcome.sent = False
            outcome.error = str(exc)
    if outcome.sent is not False:
        record = {
            "model_version": model_version,
            "outputs": outcome.outputs,
            "previews": outcome.previews,
            "summary": outcome.summary,
        }
        write_atomically(marker, json.dumps(record, indent=2).encode("utf-8"))
    return outcome
