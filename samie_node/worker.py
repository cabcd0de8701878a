"""The worker: takes ready studies from the spool, has the engine run them, queues the results for delivery.

The worker keeps several studies in flight (``engine.max_studies_in_flight``) through a
:class:`~samie_node.scheduler.Scheduler`, which cuts them into chunks of images and runs the smallest
study's chunks first, so a one-image study is not made to wait for a large one. A study is claimed from
the spool only while the engine has a worker to run it: when the Ray cluster is unreachable or has no
workers, studies stay ready in the spool (the node keeps receiving), ``status`` and the log say why, and
they are processed when the engine comes back. The node alone writes the spool, the index and the outbox,
whichever backend runs the models.

A study that fails is marked failed with its reason and the worker goes on with the next; an instance
that arrived while its study was processed sends the study back to receiving, to be processed again when
quiet. A study in flight when the node stops is left in processing, and the next start puts it back to
ready (:meth:`~samie_node.spool.Spool.reconcile`); its outputs' UIDs are derived from the study and the
models, so processing it again replaces, never duplicates, what it sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from samie_node.annotations import is_annotation_object
from samie_node.audit import AuditLog
from samie_node.config import DicomwebPeer, Peer, Settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates
from samie_node.engine.backend import Engine, EngineState
from samie_node.engine.selection import Selection
from samie_node.errors import ModelError, SamieNodeError
from samie_node.pipeline import StudyResult, encode_study, load_images
from samie_node.previews import write_previews
from samie_node.prompted import (
    PromptJob,
    annotation_objects,
    encode_not_used,
    encode_prompted,
    merge_summaries,
    needs_automatic,
    noted,
    plan_prompts,
)
from samie_node.records import InstanceRecord
from samie_node.scheduler import FinishedStudy, Scheduler
from samie_node.spool import Spool, StudyRecord
from samie_node.status import write_engine_state
from samie_node.summary import StudySummary
from samie_node.timing import StageTimer

#: Fetches a study from the PACS into the spool (C-MOVE or C-GET); returns why it failed, "" when it did not.
Retriever = Callable[[str], str]

LOG = logging.getLogger("samie_node.worker")


def destinations_for(study: StudyRecord, settings: Settings) -> list[Peer | DicomwebPeer]:
    """Where a study's results go: the configured destinations, plus the sender when configured so."""
    peers: list[Peer | DicomwebPeer] = list(settings.send.destinations)
    send = settings.send
    if send.return_to_caller and study.calling_ae_title and study.calling_host and send.return_port:
        caller = Peer(ae_title=study.calling_ae_title, host=study.calling_host, port=send.return_port)
        if caller.label not in {p.label for p in peers}:
            peers.append(caller)
    return peers


@dataclass
class _InFlight:
    """A claimed study: its automatic part, then (when something was drawn) its prompted part."""

    record: StudyRecord
    selection: Selection
    started: float
    prompts: PromptJob | None = None
    stage: Literal["automatic", "prompted"] = "automatic"
    summary: StudySummary | None = None  # the automatic part's, merged with the prompted part's


class Worker:
    """Runs ready studies through the engine, several at a time (a node service: ``run_once`` in a loop).

    Parameters
    ----------
    settings, spool, audit
        The node's settings, store and audit trail.
    engine
        Where the models run, opened once by the caller and held for the worker's life.
    templates
        Codes and wording for SEG and SR.
    retrieve
        Fetches a study from the PACS when a drawing names images the node does not have
        (``prompts.retrieve_from``); None: such regions are reported, not fetched.
    """

    name = "worker"

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        audit: AuditLog,
        engine: Engine,
        templates: Templates,
        clock: Callable[[], float] = time.monotonic,
        retrieve: Retriever | None = None,
    ) -> None:
        self.retrieve = retrieve
        self._settings = settings
        self._spool = spool
        self._audit = audit
        self._engine = engine
        self._templates = templates
        self._clock = clock
        self._scheduler = Scheduler(engine, settings)
        self._in_flight: dict[str, _InFlight] = {}
        self._engine_state: EngineState | None = None

    def run_once(self) -> bool:
        """Claim ready studies while there is room, advance the engine one step, finish what came back;
        True while there is work."""
        state = self._watch_engine()
        claimed = 0
        while state.available and self._scheduler.room() > 0 and self._claim():
            claimed += 1
        finished = self._scheduler.step(timeout_s=self._settings.study.poll_interval_s)
        for study in finished:
            self._finish(study)
        return bool(claimed or finished or self._in_flight)

    def close(self) -> None:
        """Stop the engine's workers (the node calls this when it stops)."""
        self._engine.close()

    def _watch_engine(self) -> EngineState:
        """The engine's state; a change is logged and written where ``samie-node status`` reads it."""
        state = self._engine.state()
        if state != self._engine_state:
            level = logging.INFO if state.available else logging.WARNING
            waiting = len(self._spool.studies("ready"))
            LOG.log(
                level,
                "engine %s: %s workers=%d (%s); studies waiting=%d",
                state.backend,
                "available" if state.available else "UNAVAILABLE, studies wait in the spool",
                state.workers,
                state.message,
                waiting,
            )
            write_engine_state(self._spool, state)
            self._engine_state = state
        return state

    def _claim(self) -> bool:
        study_instance_uid = self._spool.claim_ready_study()
        if study_instance_uid is None:
            return False
        started = self._clock()
        timer = StageTimer()
        try:
            record = self._spool.study(study_instance_uid)
            if record is None:
                raise SamieNodeError("study vanished from the index")
            with timer.stage("load"):
                selection, job = self._load(record)
        except SamieNodeError as exc:
            self._record(study_instance_uid, "failed", str(exc), None, started)
            return True
        flight = _InFlight(record, selection, started, job)
        previous = StudySummary.from_dict(record.result)
        if needs_automatic(previous, selection, job):
            self._in_flight[study_instance_uid] = flight
            self._scheduler.add(study_instance_uid, selection.images, timer)
        else:
            LOG.info("drawings re-open study_instance_uid=%s: only the drawn regions are computed", study_instance_uid)
            flight.summary = previous
            self._start_prompted(study_instance_uid, flight, timer)
        return True

    def _load(self, record: StudyRecord) -> tuple[Selection, PromptJob | None]:
        """The study's images and, when something new was drawn on them, its prompted part (the study
        fetched from the PACS first when a drawing names images the node does not have)."""
        uid = record.study_instance_uid
        instances = self._spool.instances(uid)
        selection = load_images([i.path for i in instances], self._settings)
        job = self._prompt_job(record, instances, selection)
        if job is not None and job.missing and self.retrieve is not None:
            LOG.info(
                "drawings name %d image(s) the node does not have: retrieving study_instance_uid=%s",
                len(job.missing),
                uid,
            )
            error = self.retrieve(uid)
            if error:
                LOG.warning("retrieve for drawings failed study_instance_uid=%s: %s", uid, error)
            instances = self._spool.instances(uid)
            selection = load_images([i.path for i in instances], self._settings)
            job = self._prompt_job(record, instances, selection)
        return selection, job

    def _prompt_job(
        self, record: StudyRecord, instances: list[InstanceRecord], selection: Selection
    ) -> PromptJob | None:
        if not self._settings.prompts.enabled:
            return None
        previous = StudySummary.from_dict(record.result)
        annotations = annotation_objects(
            [i.path for i in instances if is_annotation_object(i.sop_class_uid)],
            self._settings.output.manufacturer,
            previous.answered_annotations if previous is not None else (),
        )
        return plan_prompts(annotations, selection.images) if annotations else None

    def _start_prompted(self, key: str, flight: _InFlight, timer: StageTimer) -> None:
        """Hand the drawn regions to the engine; with none to segment, the study is done with the SR that
        says why (or, when nothing was drawn at all, with its notes)."""
        job = flight.prompts
        if job is None:
            return
        if not job.regions:
            self._answer_not_used(key, flight, job, timer)
            return
        flight.stage = "prompted"
        self._in_flight[key] = flight
        self._scheduler.add(key, job.images, timer, job.frame_prompts())

    def _answer_not_used(self, key: str, flight: _InFlight, job: PromptJob, timer: StageTimer) -> None:
        """The one catcher of drawings that gave no prompt: the SR that says why is queued, the objects
        answered; a failure leaves them unanswered, with the reason in the notes and the log."""
        summary = flight.summary or StudySummary(0, 0, 0, 0, None, {}, {}, [], {}, "")
        flight.stage, flight.summary = "prompted", summary
        try:
            if job.drawn:
                models = self._engine.models_info()
                if models is None:
                    raise ModelError("the engine has not reported its models")
                result = encode_not_used(job, models, self._templates, self._settings, timer)
                self.queue_outputs(flight.record, result)
                summary = merge_summaries(summary, result.summary)
            else:
                summary = noted(summary, job)
        except SamieNodeError as exc:
            self._fail(key, flight, str(exc))
        else:
            self._record(key, "done", "", summary, flight.started)

    def _finish(self, finished: FinishedStudy) -> None:
        """The one catcher of a study: done with its outputs queued, or failed with its reason."""
        flight = self._in_flight.pop(finished.key)
        try:
            if finished.inference is None:
                raise SamieNodeError(finished.error)
            models = self._engine.models_info()
            if models is None:
                raise ModelError("the engine returned results before reporting its models")
            if flight.stage == "prompted" and flight.prompts is not None:
                result = encode_prompted(
                    flight.prompts, finished.inference, models, self._templates, self._settings, finished.timer
                )
                self.queue_outputs(flight.record, result)
                summary = merge_summaries(flight.summary, result.summary)
            else:
                result = encode_study(
                    flight.selection,
                    finished.inference,
                    models,
                    self._templates,
                    self._settings,
                    finished.timer,
                    overlays_for_destinations=any(
                        p.secondary_capture for p in destinations_for(flight.record, self._settings)
                    ),
                )
                self.queue_outputs(flight.record, result)
                previous = StudySummary.from_dict(flight.record.result)
                answered = previous.answered_annotations if previous is not None else []
                summary = replace(result.summary, answered_annotations=answered)
                if flight.prompts is not None:
                    flight.summary = summary
                    self._start_prompted(finished.key, flight, StageTimer())
                    return
        except SamieNodeError as exc:
            self._fail(finished.key, flight, str(exc))
        except Exception as exc:  # a bug must not stop the worker: the study fails with the error's type
            LOG.exception("study failed with an unexpected error study_instance_uid=%s", finished.key)
            self._fail(finished.key, flight, f"internal error ({type(exc).__name__})")
        else:
            self._record(finished.key, "done", "", summary, flight.started)

    def _fail(self, key: str, flight: _InFlight, reason: str) -> None:
        """A failed automatic part fails the study; a failed prompted part leaves the automatic results
        done, with the reason in the notes and the log."""
        if flight.stage == "prompted" and flight.summary is not None:
            LOG.warning("drawn regions not answered study_instance_uid=%s: %s", key, reason)
            summary = replace(flight.summary, notes=[*flight.summary.notes, f"drawn regions not answered: {reason}"])
            self._record(key, "done", "", summary, flight.started)
        else:
            self._record(key, "failed", reason, None, flight.started)

    def _record(
        self, study_instance_uid: str, outcome: str, reason: str, summary: StudySummary | None, started: float
    ) -> None:
        if outcome == "done" and summary is not None:
            final = self._spool.finish_study(study_instance_uid, "done", "", summary.to_dict())
        else:
            final = self._spool.finish_study(study_instance_uid, "failed", reason[:500], {})
            LOG.warning("study failed study_instance_uid=%s: %s", study_instance_uid, reason)
        self._audit.record(
            "study_processed",
            study_instance_uid=study_instance_uid,
            outcome=outcome,
            state=final,
            reason=reason[:200],
            ms=round((self._clock() - started) * 1000, 1),
            timings_ms=summary.timings_ms if summary is not None else {},
        )

    def queue_outputs(self, study: StudyRecord, result: StudyResult) -> None:
        """Write a study's outputs to the outbox and queue them for every destination."""
        destinations = destinations_for(study, self._settings)
        folder = self._spool.outbox_dir / study.study_instance_uid
        queued: list[tuple[str, str, Path, str]] = []
        for output in result.outputs:
            path = folder / f"{output.sop_instance_uid}.dcm"
            self._spool.write_atomically(path, encode_file(output.dataset))
            queued.extend(
                (output.sop_class_uid, output.sop_instance_uid, path, peer.label)
                for peer in destinations
                if output.for_all_destinations or peer.secondary_capture
            )
        self._spool.add_outputs(study.study_instance_uid, queued)  # every file written first, then all at once
        write_previews(result.previews, folder / "previews", fsync=self._settings.node.fsync)
        if not destinations:
            LOG.warning(
                "no destination configured: results of study_instance_uid=%s stay in %s",
                study.study_instance_uid,
                folder,
            )
