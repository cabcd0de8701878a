"""The worker: takes ready studies from the spool, runs the pipeline, queues the results for delivery.

One worker holds the models (loaded once at start-up) and processes one study at a time. A study that
fails is marked failed with its reason and the worker goes on with the next; an instance that arrived
while its study was processed sends the study back to receiving, to be processed again when quiet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from samie_node.audit import AuditLog
from samie_node.config import DicomwebPeer, Peer, Settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates
from samie_node.engine.models import Models
from samie_node.errors import SamieNodeError
from samie_node.pipeline import StudyResult, process_study
from samie_node.previews import write_previews
from samie_node.spool import Spool, StudyRecord

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


class Worker:
    """Processes ready studies one at a time (a node service: ``run_once`` is called in a loop).

    Parameters
    ----------
    settings, spool, audit
        The node's settings, store and audit trail.
    models
        Loaded once by the caller and held for the worker's life.
    templates
        Codes and wording for SEG and SR.
    """

    name = "worker"

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        audit: AuditLog,
        models: Models,
        templates: Templates,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._spool = spool
        self._audit = audit
        self._models = models
        self._templates = templates
        self._clock = clock

    def run_once(self) -> bool:
        """Process the oldest ready study, if any; True if one was taken."""
        study_instance_uid = self._spool.claim_ready_study()
        if study_instance_uid is None:
            return False
        started = self._clock()
        study = self._spool.study(study_instance_uid)
        timings_ms: dict[str, float] = {}
        try:
            if study is None:
                raise SamieNodeError("study vanished from the index")
            result = self.process(study)
            final = self._spool.finish_study(study_instance_uid, "done", "", result.summary.to_dict())
            outcome, reason, timings_ms = "done", "", result.summary.timings_ms
        except SamieNodeError as exc:
            outcome, reason = "failed", str(exc)
        except Exception as exc:  # a bug must not stop the worker: the study fails with the error's type
            LOG.exception("study failed with an unexpected error study_instance_uid=%s", study_instance_uid)
            outcome, reason = "failed", f"internal error ({type(exc).__name__})"
        if outcome == "failed":
            final = self._spool.finish_study(study_instance_uid, "failed", reason[:500], {})
            LOG.warning("study failed study_instance_uid=%s: %s", study_instance_uid, reason)
        elapsed_ms = (self._clock() - started) * 1000
        self._audit.record(
            "study_processed",
            study_instance_uid=study_instance_uid,
            outcome=outcome,
            state=final,
            reason=reason[:200],
            ms=round(elapsed_ms, 1),
            timings_ms=timings_ms,
        )
        return True

    def process(self, study: StudyRecord) -> StudyResult:
        """Run the pipeline on a study and queue its outputs for every destination."""
        destinations = destinations_for(study, self._settings)
        paths = [record.path for record in self._spool.instances(study.study_instance_uid)]
        result = process_study(
            paths,
            self._models,
            self._templates,
            self._settings,
            overlays_for_destinations=any(peer.secondary_capture for peer in destinations),
        )
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
        return result
