"""Offline processing of files and folders (``samie-node process``): no PACS, no spool.

Files are grouped into studies by Study Instance UID; each study goes through the same pipeline as a
pushed one, and its SEG, SR, overlays and PNG previews are written to ``OUT/<StudyInstanceUID>/``, and
optionally sent to a destination. Several studies are in flight at once through the same scheduler as
the node's worker, so with the Ray backend a folder of many small studies keeps every worker busy and a
large one spreads over all of them. A ``result.json`` written last marks a study done for a model
version: a re-run skips it unless forced, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pydicom

from samie_node.config import Peer, Settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates
from samie_node.engine.backend import Engine
from samie_node.engine.models import ModelsInfo
from samie_node.engine.selection import Selection
from samie_node.errors import ModelError, SamieNodeError
from samie_node.files import write_atomically
from samie_node.net.send import calling_ae_title, store_files
from samie_node.pipeline import StudyResult, encode_study, load_images
from samie_node.previews import write_previews
from samie_node.prompted import (
    PromptJob,
    annotation_objects,
    encode_not_used,
    encode_prompted,
    merge_summaries,
    noted,
    plan_prompts,
)
from samie_node.scheduler import FinishedStudy, Scheduler
from samie_node.timing import StageTimer
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


@dataclass
class _Job:
    """A study of the batch: its automatic part, then the regions drawn in its annotation objects."""

    files: list[Path]
    selection: Selection
    prompts: PromptJob | None = None
    automatic: FinishedStudy | None = None  # set once the automatic part is back and the prompted part runs

    def prompted_next(self, finished: FinishedStudy) -> bool:
        """True when the automatic part just finished and drawn regions are to be segmented next."""
        return (
            self.automatic is None
            and finished.inference is not None
            and self.prompts is not None
            and bool(self.prompts.regions)
        )


def load_job(files: list[Path], settings: Settings) -> _Job:
    """A study's images, and the regions drawn in its annotation objects (the node's own excluded)."""
    selection = load_images(files, settings)
    if not settings.prompts.enabled:
        return _Job(files, selection)
    annotations = annotation_objects(files, settings.output.manufacturer)
    return _Job(files, selection, plan_prompts(annotations, selection.images) if annotations else None)


@dataclass(frozen=True)
class _Batch:
    """One ``process`` run: what it writes where, and to whom it sends."""

    out_dir: Path
    models: ModelsInfo
    templates: Templates
    settings: Settings
    destination: Peer | None
    force: bool

    def already_done(self, study_uid: str, files: list[Path]) -> StudyOutcome | None:
        """The earlier outcome when ``result.json`` says the study was done with these models."""
        marker = self.out_dir / study_uid / RESULT_FILE
        if not marker.exists() or self.force:
            return None
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if previous.get("model_version") != self.models.algorithm.model_version:
            return None
        return StudyOutcome(
            study_uid,
            "skipped",
            len(files),
            previous.get("outputs", []),
            previous.get("previews", []),
            previous.get("summary", {}),
        )

    def finish(self, finished: FinishedStudy, job: _Job) -> StudyOutcome:
        """Encode and write a study the engine finished, send it when asked, then mark it done."""
        study_uid = finished.key
        try:
            result = self._encode(finished, job)
            written, previews = write_result(result, self.out_dir / study_uid)
        except SamieNodeError as exc:
            LOG.warning("study failed study_instance_uid=%s: %s", study_uid, exc)
            return StudyOutcome(study_uid, "failed", len(job.files), error=str(exc))
        outcome = StudyOutcome(
            study_uid,
            "done",
            len(job.files),
            [str(p) for p in written],
            [str(p) for p in previews],
            result.summary.to_dict(),
        )
        if self.destination is not None:
            self._send(outcome, written, result, self.destination)
        if outcome.sent is not False:
            record = {
                "model_version": self.models.algorithm.model_version,
                "outputs": outcome.outputs,
                "previews": outcome.previews,
                "summary": outcome.summary,
            }
            write_atomically(self.out_dir / study_uid / RESULT_FILE, json.dumps(record, indent=2).encode("utf-8"))
        return outcome

    def _encode(self, finished: FinishedStudy, job: _Job) -> StudyResult:
        """The automatic results and, when regions were drawn, the prompted ones added."""
        automatic = job.automatic or finished
        if automatic.inference is None:
            raise SamieNodeError(automatic.error)
        result = encode_study(
            job.selection,
            automatic.inference,
            self.models,
            self.templates,
            self.settings,
            automatic.timer,
            overlays_for_destinations=bool(self.destination and self.destination.secondary_capture),
        )
        if job.prompts is None:
            return result
        try:
            if job.automatic is not None:  # the prompted part ran: its answer, or why there is none
                if finished.inference is None:
                    raise SamieNodeError(finished.error)
                drawn = encode_prompted(
                    job.prompts, finished.inference, self.models, self.templates, self.settings, finished.timer
                )
            elif job.prompts.drawn:  # no drawn region gave a prompt: the SR alone says why
                drawn = encode_not_used(job.prompts, self.models, self.templates, self.settings, StageTimer())
            else:  # nothing drawn: notes only
                return replace(result, summary=noted(result.summary, job.prompts))
        except SamieNodeError as exc:  # the automatic results stand; the drawings are not answered
            note = f"drawn regions not answered: {exc}"
            return replace(result, summary=replace(result.summary, notes=[*result.summary.notes, note]))
        return replace(
            result, outputs=result.outputs + drawn.outputs, summary=merge_summaries(result.summary, drawn.summary)
        )

    def _send(self, outcome: StudyOutcome, written: list[Path], result: StudyResult, destination: Peer) -> None:
        try:
            to_send = [
                p
                for p, o in zip(written, result.outputs, strict=True)
                if o.for_all_destinations or destination.secondary_capture
            ]
            store_files(
                destination,
                to_send,
                calling_ae_title=calling_ae_title(self.settings),
                timeout_s=self.settings.send.timeout_s,
            )
            outcome.sent = True
        except SamieNodeError as exc:
            outcome.sent = False
            outcome.error = str(exc)


def process_paths(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    engine: Engine,
    templates: Templates,
    settings: Settings,
    destination: Peer | None = None,
    force: bool = False,
    on_study: Callable[[StudyOutcome], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    wait_for_engine_s: float = 120.0,
) -> tuple[list[StudyOutcome], int]:
    """Process every study found under ``paths``; returns the outcomes (in the order the studies were
    found) and the count of unusable files.

    Raises
    ------
    ModelError
        If the engine reports no models within ``wait_for_engine_s`` (a Ray cluster unreachable or
        without workers).
    """
    studies, unusable = group_by_study(paths)
    models = engine.models_info(wait_s=wait_for_engine_s)
    if models is None:
        raise ModelError(f"the engine has no worker after {wait_for_engine_s:.0f} s: {engine.state().message}")
    batch = _Batch(out_dir, models, templates, settings, destination, force)
    outcomes: dict[str, StudyOutcome] = {}
    jobs: dict[str, _Job] = {}
    scheduler = Scheduler(engine, settings, on_chunk=(lambda _key, n: on_images(n)) if on_images else None)

    def record(outcome: StudyOutcome) -> None:
        outcomes[outcome.study_instance_uid] = outcome
        if on_study is not None:
            on_study(outcome)

    queue = list(studies.items())
    while queue or len(scheduler):
        while queue and scheduler.room() > 0:
            study_uid, files = queue.pop(0)
            if (previous := batch.already_done(study_uid, files)) is not None:
                record(previous)
                continue
            timer = StageTimer()
            with timer.stage("load"):
                jobs[study_uid] = load_job(files, settings)
            scheduler.add(study_uid, jobs[study_uid].selection.images, timer)
        for finished in scheduler.step(timeout_s=1.0):
            job = jobs.pop(finished.key)
            if job.prompted_next(finished) and job.prompts is not None:
                job.automatic = finished
                jobs[finished.key] = job
                scheduler.add(finished.key, job.prompts.images, StageTimer(), job.prompts.frame_prompts())
                continue
            record(batch.finish(finished, job))
    return [outcomes[uid] for uid in studies if uid in outcomes], unusable
