"""Retention: which studies' files go and when, why the others stay, and the cleaner that ``serve`` runs.

The policy (``[retention]`` in the settings): a study's received instances stay ``keep_delivered`` after
its results are all delivered, or ``keep_failed`` when it failed or has dead letters; its results and
previews stay ``keep_outbox`` after delivery (``keep_failed`` with dead letters). A study's clock starts
when it settled: when it was processed or its last result was delivered, whichever is later. Below the
emergency threshold (the disk floor plus ``emergency_margin_bytes`` of free space) the oldest done studies
go first, then failed ones, whatever their age, until there is that much free again.

Never removed, whatever the policy or the disk says: see :meth:`samie_node.purge.StudyFacts.protection`.
The removal itself, crash-safe, is :mod:`samie_node.purge`; ``samie-node purge`` and :class:`Cleaner`
both plan here and remove there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from samie_node.audit import AuditLog
from samie_node.config import RetentionSettings, Settings
from samie_node.errors import SpoolError
from samie_node.purge import PurgeOutcome, StudyFacts, begin, finish_interrupted, live_leases, resume, study_facts
from samie_node.records import PurgeReason
from samie_node.spool import Spool

LOG = logging.getLogger("samie_node.retention")

#: When free space is below the emergency threshold and nothing can be removed, look again after this long.
EMERGENCY_RECHECK_S = 10.0


@dataclass(frozen=True)
class Keep:
    """How long each kind of data stays after its study settled, in seconds."""

    delivered: float
    failed: float
    outbox: float

    @classmethod
    def from_settings(cls, retention: RetentionSettings) -> Keep:
        """The configured policy."""
        return cls(retention.keep_delivered, retention.keep_failed, retention.keep_outbox)

    @classmethod
    def older_than(cls, seconds: float) -> Keep:
        """Everything older than ``seconds``, whatever it is (the operator's ``--older-than``, the emergency)."""
        return cls(seconds, seconds, seconds)


@dataclass(frozen=True)
class Decision:
    """What retention does with one study now: which parts go, and why what stays stays."""

    study_instance_uid: str
    state: str
    settled_at: float
    instances: bool
    results: bool
    kept: str
    files: int = 0
    bytes: int = 0

    @property
    def removes(self) -> bool:
        """Whether anything of the study goes."""
        return self.instances or self.results


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def decide(facts: StudyFacts, keep: Keep, now: float, holder: str = "") -> Decision:
    """Apply ``keep`` to one study; ``holder`` names a live lease on it."""
    why = facts.protection(holder)
    if why:
        return Decision(facts.study_instance_uid, facts.state, facts.settled_at, False, False, why)
    troubled = facts.state == "failed" or facts.dead > 0
    label = "failed" if facts.state == "failed" else "dead letters" if facts.dead else "delivered"
    keep_instances = keep.failed if troubled else keep.delivered
    keep_results = keep.failed if troubled else keep.outbox
    age = now - facts.settled_at
    has_instances = facts.state != "purged"
    instances = has_instances and age >= keep_instances
    results = facts.results_left and age >= keep_results
    waits = []
    if has_instances and not instances:
        waits.append(f"instances until {_when(facts.settled_at + keep_instances)}")
    if facts.results_left and not results:
        waits.append(f"results until {_when(facts.settled_at + keep_results)}")
    return Decision(
        facts.study_instance_uid,
        facts.state,
        facts.settled_at,
        instances,
        results,
        f"{label}: kept, {', '.join(waits)}" if waits else "",
        facts.instances if instances else 0,
        facts.instance_bytes if instances else 0,
    )


def plan(
    spool: Spool,
    keep: Keep,
    now: float,
    *,
    study_instance_uids: Sequence[str] = (),
    emergency: bool = False,
) -> list[Decision]:
    """A decision for every study with something left (or for the given ones), in the order removals go:
    oldest settled first; for an emergency, done studies before failed ones."""
    leases = live_leases(spool, now)
    facts = study_facts(spool, study_instance_uids)
    if emergency:
        facts.sort(key=lambda f: (f.state == "failed", f.settled_at))
    decisions = [decide(f, keep, now, leases.get(f.study_instance_uid, "")) for f in facts]
    known = {f.study_instance_uid for f in facts}
    unknown = [uid for uid in dict.fromkeys(study_instance_uids) if uid not in known]
    return decisions + [Decision(uid, "unknown", 0.0, False, False, "not in the index") for uid in unknown]


def with_result_sizes(spool: Spool, decisions: Sequence[Decision]) -> list[Decision]:
    """The decisions with the files and bytes of the results they remove counted (for what is printed)."""
    sized = []
    for decision in decisions:
        files, size = 0, 0
        if decision.results:
            for dirpath, _dirnames, filenames in os.walk(spool.outbox_dir / decision.study_instance_uid):
                for filename in filenames:
                    files += 1
                    size += os.stat(os.path.join(dirpath, filename)).st_size
        sized.append(Decision(**{**asdict(decision), "files": decision.files + files, "bytes": decision.bytes + size}))
    return sized


def remove(
    spool: Spool,
    audit: AuditLog,
    decision: Decision,
    reason: PurgeReason,
    retention: RetentionSettings,
    clock: Callable[[], float] = time.time,
) -> PurgeOutcome | None:
    """Carry out one decision; None if the study became protected meanwhile (it is logged why)."""
    why = begin(
        spool, decision.study_instance_uid, reason, instances=decision.instances, results=decision.results, clock=clock
    )
    if why:
        LOG.info("purge skipped study_instance_uid=%s: %s", decision.study_instance_uid, why)
        return None
    return resume(
        spool,
        decision.study_instance_uid,
        audit,
        files_per_batch=retention.files_per_batch,
        batch_pause_s=retention.batch_pause_s,
        clock=clock,
    )


@dataclass
class PurgeReport:
    """What ``samie-node purge`` planned and did."""

    dry_run: bool
    reason: PurgeReason
    decisions: list[Decision]
    removed: list[PurgeOutcome] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (study_instance_uid, error)
    free_before: int = 0
    free_after: int = 0

    @property
    def bytes_freed(self) -> int:
        """Bytes removed (planned, for a dry run)."""
        if self.dry_run:
            return sum(d.bytes for d in self.decisions if d.removes)
        return sum(o.bytes for o in self.removed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``purge --json``)."""
        return {
            "dry_run": self.dry_run,
            "reason": self.reason,
            "planned": [asdict(d) for d in self.decisions if d.removes],
            "kept": [asdict(d) for d in self.decisions if d.kept],
            "removed": [asdict(o) for o in self.removed],
            "failed": [{"study_instance_uid": u, "error": e} for u, e in self.failed],
            "bytes_freed": self.bytes_freed,
            "free_bytes_before": self.free_before,
            "free_bytes_after": self.free_after,
        }


def run_purge(
    spool: Spool,
    audit: AuditLog,
    retention: RetentionSettings,
    *,
    dry_run: bool = False,
    older_than: float | None = None,
    study_instance_uids: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> PurgeReport:
    """The ``purge`` command: the policy now, or the operator's ``older_than`` and studies; a dry run only
    plans. A real run first finishes purges a crash interrupted."""
    operator = older_than is not None or bool(study_instance_uids)
    keep = Keep.older_than(older_than or 0.0) if operator else Keep.from_settings(retention)
    report = PurgeReport(dry_run, "operator" if operator else "policy", [], free_before=spool.free_bytes())
    if not dry_run:
        report.removed += finish_interrupted(spool, audit, files_per_batch=retention.files_per_batch, clock=clock)
    report.decisions = with_result_sizes(spool, plan(spool, keep, clock(), study_instance_uids=study_instance_uids))
    if not dry_run:
        for decision in report.decisions:
            if not decision.removes:
                continue
            try:
                outcome = remove(spool, audit, decision, report.reason, retention, clock)
            except SpoolError as exc:  # the purge stays recorded; the next run or start-up finishes it
                report.failed.append((decision.study_instance_uid, str(exc)))
                continue
            if outcome is not None:
                report.removed.append(outcome)
    report.free_after = spool.free_bytes()
    return report


class Cleaner:
    """The node service that applies retention in ``serve`` (its own thread; ``run_once`` in a loop).

    Each call checks free space (cheap) and, once per ``pass_interval``, applies the policy to at most
    ``max_studies_per_pass`` studies; below the disk floor plus ``emergency_margin_bytes`` of free space
    it removes the oldest done studies first until there is that much free again. It never runs on the
    receive path.
    """

    name = "cleaner"

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retention = settings.retention
        margin = settings.retention.emergency_margin_bytes
        #: Free bytes below which the emergency clean runs (0: never).
        self.emergency_free_bytes = settings.limits.disk_floor_bytes + margin if margin else 0
        self._spool = spool
        self._audit = audit
        self._clock = clock
        self._monotonic = monotonic
        self._next_pass = 0.0
        self._next_emergency = 0.0

    def run_once(self) -> bool:
        """One bounded pass when due; True if anything was removed (the loop then goes on at once)."""
        retention = self._retention
        if (
            self.emergency_free_bytes
            and self._monotonic() >= self._next_emergency
            and self._spool.free_bytes() < self.emergency_free_bytes
        ):
            return self._emergency()
        if self._monotonic() < self._next_pass:
            return False
        self._next_pass = self._monotonic() + retention.pass_interval
        finish_interrupted(self._spool, self._audit, files_per_batch=retention.files_per_batch, clock=self._clock)
        due = [d for d in plan(self._spool, Keep.from_settings(retention), self._clock()) if d.removes]
        due = due[: retention.max_studies_per_pass]
        removed = [o for d in due if (o := self._remove(d, "policy")) is not None]
        if len(due) == retention.max_studies_per_pass:
            self._next_pass = 0.0  # more is due: the next pass follows at once
        if removed:
            LOG.info("retention pass: %d studies, %d bytes freed", len(removed), sum(o.bytes for o in removed))
        return bool(removed)

    def _emergency(self) -> bool:
        retention = self._retention
        candidates = plan(self._spool, Keep.older_than(0.0), self._clock(), emergency=True)
        removed = 0
        for decision in [d for d in candidates if d.removes][: retention.max_studies_per_pass]:
            if self._spool.free_bytes() >= self.emergency_free_bytes:
                break
            if self._remove(decision, "emergency") is not None:
                removed += 1
        if not removed:
            LOG.warning(
                "free space %d bytes is below the emergency threshold and nothing more can be removed",
                self._spool.free_bytes(),
            )
            self._next_emergency = self._monotonic() + EMERGENCY_RECHECK_S
        return removed > 0

    def _remove(self, decision: Decision, reason: PurgeReason) -> PurgeOutcome | None:
        try:
            return remove(self._spool, self._audit, decision, reason, self._retention, self._clock)
        except SpoolError as exc:  # one study's failure: logged; its purge is finished by the next pass
            LOG.error("purge failed study_instance_uid=%s: %s", decision.study_instance_uid, exc)
            return None
