"""Retention through the spool: the policy, what is never removed, late instances, leases, the emergency
order, interrupted purges, and the index migration that brought the ``purged`` state."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from retention_fixtures import (
    Clock,
    assert_index_agrees_with_disk,
    audit_events,
    ct_bytes,
    files_under,
    seed_study,
)

from samie_node.audit import AuditLog
from samie_node.config import RetentionSettings, Settings
from samie_node.errors import SpoolError
from samie_node.purge import begin, finish_interrupted, lease, resume
from samie_node.records import SCHEMA_VERSION, OutputState, PurgeReason, StudyState
from samie_node.reprocess import reprocess
from samie_node.retention import Cleaner, run_purge
from samie_node.spool import Spool
from samie_node.testing.sample_studies import PATIENT_ID, PATIENT_NAME

HOUR = 3600.0
POLICY = RetentionSettings(keep_delivered=HOUR, keep_failed=24 * HOUR, keep_outbox=2 * HOUR, batch_pause_s=0)

#: An index written by samie-node before retention (schema version 0); see tests/data/README.md.
OLD_INDEX = Path(__file__).parent / "data" / "index-v0.sqlite3"
DONE_V0, FAILED_V0 = "1.2.826.0.1.3680043.8.498.9001", "1.2.826.0.1.3680043.8.498.9002"


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def spool(tmp_path: Path, clock: Clock) -> Spool:
    return Spool(tmp_path, fsync=False, clock=clock)


@pytest.fixture()
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl")


def test_an_index_written_before_retention_is_migrated(tmp_path: Path, clock: Clock, audit: AuditLog) -> None:
    shutil.copy(OLD_INDEX, tmp_path / "index.sqlite3")
    spool = Spool(tmp_path, fsync=False, clock=clock)
    assert spool.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    done, failed = spool.study(DONE_V0), spool.study(FAILED_V0)
    assert done is not None and failed is not None
    assert (done.state, done.accession_number, done.instances, done.result) == ("done", "ACC1", 2, {"images": 2})
    assert (failed.state, failed.reason, failed.instances) == ("failed", "no usable images", 1)
    assert (done.purged_at, done.results_purged_at, done.bytes_freed) == (None, None, 0)
    [output] = spool.outputs(DONE_V0)
    assert (output.state, output.destination, output.purged_at) == ("sent", "PACS@127.0.0.1:4242", None)
    # The constraint still refuses what is not a state.
    with pytest.raises(SpoolError, match="CHECK"), spool.transaction() as tx:
        tx.execute("UPDATE studies SET state = 'gone' WHERE study_instance_uid = ?", (DONE_V0,))
    # Retention works on it: the delivered study goes (its files are not here), the failed one stays.
    clock.now = 1_700_000_000 + 10 * HOUR
    report = run_purge(spool, audit, POLICY, clock=clock)
    assert [(o.study_instance_uid, o.bytes) for o in report.removed] == [(DONE_V0, 30)]
    assert spool.study(DONE_V0).state == "purged"  # type: ignore[union-attr]
    assert [d.kept.split(":")[0] for d in report.decisions if d.kept] == ["failed"]
    spool.close()
    # Opening it again changes nothing; an index from a newer samie-node is refused, not damaged.
    assert Spool(tmp_path, fsync=False).study(DONE_V0).state == "purged"  # type: ignore[union-attr]
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="newer"):
        Spool(tmp_path, fsync=False)


class _RollbackError(Exception):
    """Raised inside a transaction to leave nothing behind."""


def test_the_schema_accepts_exactly_the_states_the_types_name(spool: Spool) -> None:
    def accepted(sql: str, value: str) -> bool:
        try:
            with spool.transaction() as tx:
                tx.execute(sql, (value,))
                raise _RollbackError  # leave nothing behind
        except _RollbackError:
            return True
        except SpoolError:
            return False

    study = "INSERT INTO studies (study_instance_uid, state, first_received, last_received, state_changed)"
    output = "INSERT INTO outputs (study_instance_uid, sop_class_uid, sop_instance_uid, path, destination, state,"
    purge = "INSERT INTO purges (study_instance_uid, reason, instances, results, started_at)"
    cases = [
        (f"{study} VALUES ('1.2', ?, 0, 0, 0)", get_args(StudyState)),
        (f"{output} created_at) VALUES ('1.2', '1.2', '1.3', '/x', 'P@h:1', ?, 0)", get_args(OutputState)),
        (f"{purge} VALUES ('1.2', ?, 1, 1, 0)", get_args(PurgeReason)),
    ]
    for sql, values in cases:
        assert all(accepted(sql, value) for value in values), sql
        assert not accepted(sql, "bogus"), sql


def test_policy_removes_delivered_studies_and_keeps_the_rest_each_for_its_reason(
    spool: Spool, clock: Clock, audit: AuditLog, tmp_path: Path
) -> None:
    delivered = seed_study(spool, clock, seed=1)
    failed = seed_study(spool, clock, seed=2, outcome="failed")
    undelivered = seed_study(spool, clock, seed=3, outputs=("sent", "retrying"))
    dead = seed_study(spool, clock, seed=4, outputs=("dead",))
    leased = seed_study(spool, clock, seed=5)
    processing = seed_study(spool, clock, seed=6, outcome="processing")
    clock.now += 10 * HOUR
    recent = seed_study(spool, clock, seed=7)
    clock.now += 0.5 * HOUR

    with lease(spool, [leased.study_instance_uid], "resend"):
        report = run_purge(spool, audit, POLICY, clock=clock)
    removed = {o.study_instance_uid: o for o in report.removed}
    assert set(removed) == {delivered.study_instance_uid}
    kept = {d.study_instance_uid: d.kept for d in report.decisions if d.kept}
    assert kept[failed.study_instance_uid].startswith("failed: kept, instances until")
    assert "not delivered yet" in kept[undelivered.study_instance_uid]
    assert kept[dead.study_instance_uid].startswith("dead letters: kept")
    assert kept[leased.study_instance_uid] == f"in use by resend pid {os.getpid()}"
    assert kept[processing.study_instance_uid] == "processing: in flight"
    assert kept[recent.study_instance_uid].startswith("delivered: kept, instances until")

    # The delivered study's instances, results and previews are gone; its row says so.
    outcome = removed[delivered.study_instance_uid]
    assert (outcome.reason, outcome.instances, outcome.results) == ("policy", True, True)
    assert outcome.instance_files == len(delivered.instance_paths) == 3
    assert outcome.files == len(delivered.instance_paths) + len(delivered.output_paths)
    assert not any(p.exists() for p in delivered.instance_paths + delivered.output_paths)
    assert not (spool.instances_dir / delivered.study_instance_uid).exists()
    study = spool.study(delivered.study_instance_uid)
    assert study is not None and study.state == "purged" and study.purged_at == clock.now
    assert study.bytes_freed == outcome.bytes > delivered.instance_bytes
    assert all(o.purged_at == clock.now and o.state == "sent" for o in spool.outputs(delivered.study_instance_uid))
    for survivor in (failed, undelivered, dead, leased, processing, recent):
        assert all(p.exists() for p in survivor.instance_paths + survivor.output_paths)
    [record] = audit_events(tmp_path, "study_purged")
    assert record["study_instance_uid"] == delivered.study_instance_uid
    assert (record["reason"], record["bytes"]) == ("policy", outcome.bytes)
    trail = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    assert PATIENT_NAME not in trail and PATIENT_ID not in trail
    assert_index_agrees_with_disk(tmp_path)

    # Once the lease is released the leased study goes too; a day on, the failed and dead ones follow.
    assert [o.study_instance_uid for o in run_purge(spool, audit, POLICY, clock=clock).removed] == [
        leased.study_instance_uid
    ]
    clock.now += 24 * HOUR
    later = {o.study_instance_uid for o in run_purge(spool, audit, POLICY, clock=clock).removed}
    assert later == {failed.study_instance_uid, dead.study_instance_uid, recent.study_instance_uid}
    assert all(p.exists() for p in undelivered.instance_paths + undelivered.output_paths)
    assert_index_agrees_with_disk(tmp_path)


def test_results_and_instances_each_go_on_their_own_clock(spool: Spool, clock: Clock, audit: AuditLog) -> None:
    study = seed_study(spool, clock, seed=11)
    uid = study.study_instance_uid
    clock.now += 1.5 * HOUR  # past keep_delivered (1 h), not keep_outbox (2 h)
    [first] = run_purge(spool, audit, POLICY, clock=clock).removed
    assert (first.instances, first.results) == (True, False)
    assert all(p.exists() for p in study.output_paths)
    status = spool.study(uid)
    assert status is not None and status.state == "purged" and status.results_purged_at is None
    clock.now += HOUR
    [second] = run_purge(spool, audit, POLICY, clock=clock).removed
    assert (second.instances, second.results) == (False, True)
    assert not (spool.outbox_dir / uid).exists()
    status = spool.study(uid)
    assert status is not None and status.bytes_freed == first.bytes + second.bytes
    # Nothing is left: the study is no longer considered at all.
    clock.now += 100 * HOUR
    assert run_purge(spool, audit, POLICY, clock=clock).decisions == []


def test_a_late_instance_reopens_a_purged_study(spool: Spool, clock: Clock, audit: AuditLog) -> None:
    study = seed_study(spool, clock, seed=21)
    clock.now += 3 * HOUR
    assert len(run_purge(spool, audit, POLICY, clock=clock).removed) == 1
    # Re-processing has nothing to work on: it says so and leaves the study as it is.
    [(_, why)] = reprocess(spool, [study.study_instance_uid]).skipped
    assert why.startswith("purged:") and not spool.requeue_study(study.study_instance_uid)
    incoming, data = ct_bytes(3, 64, seed=21)[0]  # the same study's first slice, sent again
    path = spool.store(incoming, data)
    reopened = spool.study(study.study_instance_uid)
    assert reopened is not None
    assert (reopened.state, reopened.instances, reopened.purged_at) == ("receiving", 1, None)
    assert [r.path for r in spool.instances(study.study_instance_uid)] == [path] and path.exists()
    # It goes through the pipeline again like any study.
    assert spool.mark_quiet_studies_ready(0) == [study.study_instance_uid]
    assert spool.claim_ready_study() == study.study_instance_uid


def test_instances_stored_while_their_study_is_purged_are_kept(
    spool: Spool, clock: Clock, audit: AuditLog, tmp_path: Path
) -> None:
    study = seed_study(spool, clock, seed=31, slices=4)
    uid = study.study_instance_uid
    assert begin(spool, uid, "policy", instances=True, results=True, clock=clock) == ""
    # Mid-purge: one old instance arrives again, and a new one; neither is part of the purge any more.
    again, data = ct_bytes(4, 64, seed=31)[2]
    assert spool.store(again, data) == study.instance_paths[2]
    new = spool.store(dataclasses.replace(again, sop_instance_uid="2.25.31999"), data)
    assert spool.study(uid).state == "receiving"  # type: ignore[union-attr]
    outcome = resume(spool, uid, audit, files_per_batch=1, clock=clock)
    # The three other old instances went; the results stay, as the study will be processed again.
    assert outcome is not None and (outcome.files, outcome.instances, outcome.results) == (3, True, False)
    assert sorted(r.path for r in spool.instances(uid)) == sorted([study.instance_paths[2], new])
    assert study.instance_paths[2].read_bytes() == data and new.exists()
    assert not any(p.exists() for i, p in enumerate(study.instance_paths) if i != 2)
    assert all(p.exists() for p in study.output_paths)
    status = spool.study(uid)
    assert status is not None and (status.state, status.instances) == ("receiving", 2)
    assert_index_agrees_with_disk(tmp_path)


class _PurgeAfterWrite(Spool):
    """A spool whose next instance write is followed, before its row is written, by a purge batch: the
    interleaving of a store and a purge that could lose an acknowledged instance."""

    purge_study = ""

    def write_atomically(self, path: Path, data: object) -> None:
        super().write_atomically(path, data)  # type: ignore[arg-type]
        if self.purge_study:
            uid, self.purge_study = self.purge_study, ""
            assert resume(self, uid, AuditLog(None), files_per_batch=1000) is not None


def test_an_instance_a_purge_took_before_its_row_was_written_is_written_again(tmp_path: Path, clock: Clock) -> None:
    spool = _PurgeAfterWrite(tmp_path, fsync=False, clock=clock)
    study = seed_study(spool, clock, seed=41)
    uid = study.study_instance_uid
    assert begin(spool, uid, "policy", instances=True, results=False, clock=clock) == ""
    spool.purge_study = uid
    again, data = ct_bytes(3, 64, seed=41)[0]
    path = spool.store(again, data)  # the purge removes the new file once; the store writes it again
    assert path.read_bytes() == data
    assert [r.path for r in spool.instances(uid)] == [path]
    assert_index_agrees_with_disk(tmp_path)


def test_a_purge_interrupted_between_batches_is_finished_at_start(
    tmp_path: Path, clock: Clock, audit: AuditLog
) -> None:
    spool = Spool(tmp_path, fsync=False, clock=clock)
    undelivered = seed_study(spool, clock, seed=51, outputs=("pending",))
    study = seed_study(spool, clock, seed=52, slices=6)
    uid = study.study_instance_uid
    assert begin(spool, uid, "emergency", instances=True, results=True, clock=clock) == ""
    # Only part of the work happens before the process dies.
    with spool.transaction() as tx:
        for (path,) in tx.execute("SELECT path FROM instances WHERE purging = 1 LIMIT 2").fetchall():
            Path(path).unlink()
    spool.close()

    restarted = Spool(tmp_path, fsync=False, clock=clock)
    [outcome] = finish_interrupted(restarted, audit)
    assert (outcome.study_instance_uid, outcome.reason, outcome.instances) == (uid, "emergency", True)
    assert not any(p.exists() for p in study.instance_paths + study.output_paths)
    assert restarted.study(uid).state == "purged"  # type: ignore[union-attr]
    assert all(p.exists() for p in undelivered.instance_paths + undelivered.output_paths)
    assert [r["study_instance_uid"] for r in audit_events(tmp_path, "study_purged")] == [uid]
    assert_index_agrees_with_disk(tmp_path)


def test_a_lease_of_a_process_that_is_gone_protects_nothing(spool: Spool, clock: Clock, audit: AuditLog) -> None:
    study = seed_study(spool, clock, seed=61)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with spool.transaction() as tx:
        tx.execute(
            "INSERT INTO leases VALUES (?, 'retrieve', ?, ?)",
            (study.study_instance_uid, int(gone.stdout), clock.now + 3600),
        )
    clock.now += 2 * HOUR
    assert [o.study_instance_uid for o in run_purge(spool, audit, POLICY, clock=clock).removed] == [
        study.study_instance_uid
    ]
    assert spool.query("SELECT COUNT(*) FROM leases") == [(0,)]  # forgotten too


class _SmallDisk(Spool):
    """A spool on a disk of ``capacity`` bytes that holds only its instance and result files (the real
    small file system, with ``samie-node serve`` on it, is in test_retention_node.py)."""

    capacity = 0

    def used(self) -> int:
        return sum(p.stat().st_size for p in files_under(self.root) if p.suffix in (".dcm", ".png"))

    def free_bytes(self) -> int:
        return self.capacity - self.used()


def test_emergency_removes_the_oldest_done_studies_first_then_failed_ones(tmp_path: Path, clock: Clock) -> None:
    spool = _SmallDisk(tmp_path, fsync=False, clock=clock)
    audit = AuditLog(tmp_path / "audit.jsonl")
    undelivered = seed_study(spool, clock, seed=70, outputs=("retrying",))
    failed = seed_study(spool, clock, seed=71, outcome="failed")
    done = []
    for seed in range(72, 76):
        clock.now += 60
        done.append(seed_study(spool, clock, seed=seed))
    size = failed.instance_bytes
    settings = Settings(
        retention={"emergency_margin_bytes": 3 * size, "batch_pause_s": 0}, limits={"disk_floor_bytes": 0}
    )
    spool.capacity = spool.used() + int(1.2 * size)  # 1.2 studies free: below the threshold
    assert spool.free_bytes() < 3 * size
    cleaner = Cleaner(settings, spool, audit, clock=clock)
    assert cleaner.run_once()
    purged = [r["study_instance_uid"] for r in audit_events(tmp_path, "study_purged")]
    assert purged == [s.study_instance_uid for s in done[: len(purged)]]  # oldest done first, in order
    assert spool.free_bytes() >= 3 * size and len(purged) < len(done)
    # Still short of space with every done study gone: the failed one follows; the undelivered one stays.
    spool.capacity -= 10 * size
    while cleaner.run_once():
        pass
    purged = [r["study_instance_uid"] for r in audit_events(tmp_path, "study_purged")]
    assert purged == [s.study_instance_uid for s in done] + [failed.study_instance_uid]
    assert all(r["reason"] == "emergency" for r in audit_events(tmp_path, "study_purged"))
    assert all(p.exists() for p in undelivered.instance_paths + undelivered.output_paths)
    assert_index_agrees_with_disk(tmp_path)
