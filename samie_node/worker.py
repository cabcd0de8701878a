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
from dataclasses import dataclass

from samie_node.audit import AuditLog
from samie_node.config import DicomwebPeer, Peer, Settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates
from samie_node.engine.backend import Engine, EngineState
from samie_node.engine.selection import Selection
from samie_node.errors import ModelError, SamieNodeError
from samie_node.pipeline import StudyResult, encode_study, load_images
from samie_node.previews import write_previews
from samie_node.scheduler import FinishedStudy, Scheduler
from samie_node.spool import Spool, StudyRecord
from samie_node.status import write_engine_state
from samie_node.timing import StageTimer

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
    record: StudyRecord
    selection: Selection
    started: float


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
    ) -> None:
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
            paths = [instance.path for instance in self._spool.instances(study_instance_uid)]
            with timer.stage("load"):
                selection = load_images(paths, self._settings)
        except SamieNodeError as exc:
            self._record(study_instance_uid, "failed", str(exc), None, started)
            return True
        self._in_flight[study_instance_uid] = _InFlight(record, selection, started)
        self._scheduler.add(study_instance_uid, selection.images, timer)
        return True

    def _finish(self, finished: FinishedStudy) -> None:
        """The one catcher of a study: done with its outputs queued, or failed with its reason."""
        flight = self._in_flight.pop(finished.key)
        try:
            if finished.inference is None:
                raise SamieNodeError(finished.error)
            models = self._engine.models_info()
            if models is None:
                raise ModelError("the engine returned results before reporting its models")
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
        except SamieNodeError as exc:
            self._record(finished.key, "failed", str(exc), None, flight.started)
        except Exception as exc:  # a bug must not stop the worker: the study fails with the error's type
            LOG.exception("study failed with an unexpected error study_instance_uid=%s", finished.key)
            self._record(finished.key, "failed", f"internal error ({type(exc).__name__})", None, flight.started)
        else:
            self._record(finished.key, "done", "", result, flight.started)

    def _record(
        self, study_instance_uid: str, outcome: str, reason: str, result: StudyResult | None, started: float
    ) -> None:
        if outcome == "done" and result is not None:
            final = self._spool.finish_study(study_instance_uid, "done", "", result.summary.to_dict())
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
            timings_ms=result.summary.timings_ms if result is not None else {},
        )

    def queue_outputs(self, study: StudyRecord, result: StudyResult) -> None:
        """Write a study's outputs to the outbox and queue them for every destination."""
        destinations = destinations_for(study, self._settings)
        folder = self._spool.outbox_dir / study.study_instance_uid
        for output in result.outputs:
            path = folder / f"{output.sop_instance_uid}.dcm"
            self._spool.write_atomically(path, encode_file(output.dataset))
            for peer in destinations:
                if output.for_all_destinations or peer.secondary_capture:
                    self._spool.add_output(
                        study.study_instance_uid, output.sop_class_uid, output.sop_instance_uid, path, peer.label
                    )
        write_previews(result.previews, folder / "previews", fsync=self._settings.node.fsync)
        if not destinations:
            LOG.warning(
                "no destination configured: results of study_instance_uid=%s stay in %s",
                study.study_instance_uid,
                folder,
            )
