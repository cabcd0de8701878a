"""The durable store: atomic files, the index, study states, outputs and reconciliation."""

from __future__ import annotations

from pathlib import Path

import pytest

from samie_node.errors import InvalidInputError
from samie_node.spool import TMP_MARKER, IncomingInstance, Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def incoming(sop: str, study: str = STUDY, series: str = SERIES) -> IncomingInstance:
    return IncomingInstance(
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        accession_number="A1",
    )


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def spool(tmp_path: Path, clock: Clock) -> Spool:
    return Spool(tmp_path, clock=clock)


def test_store_writes_file_and_row(spool: Spool) -> None:
    path = spool.store(incoming("1.2.3.1"), [b"abc", b"def"])
    assert path.read_bytes() == b"abcdef"
    assert path == spool.instances_dir / STUDY / SERIES / "1.2.3.1.dcm"
    [record] = spool.instances(STUDY)
    assert record.size == 6 and record.path == path
    study = spool.study(STUDY)
    assert study is not None and study.state == "receiving" and study.instances == 1
    assert study.accession_number == "A1"
    assert not list(path.parent.glob(f"*{TMP_MARKER}*"))


@pytest.mark.parametrize("bad", ["..", "../../etc", "1.2/3", "1.2.3." + "4" * 70, "1.02.3", "abc", ""])
def test_hostile_uids_never_reach_the_file_system(spool: Spool, bad: str) -> None:
    with pytest.raises(InvalidInputError):
        spool.store(incoming(bad), b"x")
    with pytest.raises(InvalidInputError):
        spool.store(incoming("1.2.3", study=bad), b"x")
    assert list(spool.instances_dir.rglob("*")) == []


def test_duplicate_replaces_not_duplicates(spool: Spool) -> None:
    spool.store(incoming("1.2.3.1"), b"first")
    path = spool.store(incoming("1.2.3.1"), b"second")
    assert path.read_bytes() == b"second"
    assert len(spool.instances(STUDY)) == 1


def test_duplicate_moved_to_other_series_leaves_no_stale_file(spool: Spool) -> None:
    old = spool.store(incoming("1.2.3.1"), b"first")
    new = spool.store(incoming("1.2.3.1", series="1.2.9"), b"second")
    assert new != old and new.exists() and not old.exists()
    assert [r.series_instance_uid for r in spool.instances(STUDY)] == ["1.2.9"]


def test_quiet_period_and_late_instance_reopens(spool: Spool, clock: Clock) -> None:
    spool.store(incoming("1.2.3.1"), b"a")
    clock.now += 5
    assert spool.mark_quiet_studies_ready(10) == []
    clock.now += 6
    assert spool.mark_quiet_studies_ready(10) == [STUDY]
    assert spool.claim_ready_study() == STUDY
    assert spool.claim_ready_study() is None
    # An instance arriving while the study is processed flags it; finishing sends it back to receiving.
    spool.store(incoming("1.2.3.2"), b"b")
    assert spool.study(STUDY).state == "processing"  # type: ignore[union-attr]
    assert spool.finish_study(STUDY, "done", "", {"images": 1}) == "receiving"
    clock.now += 11
    assert spool.mark_quiet_studies_ready(10) == [STUDY]
    assert spool.claim_ready_study() == STUDY
    assert spool.finish_study(STUDY, "done", "", {"images": 2}) == "done"
    # A late instance after done re-opens the study.
    spool.store(incoming("1.2.3.3"), b"c")
    study = spool.study(STUDY)
    assert study is not None and study.state == "receiving" and study.instances == 3


def test_reconcile_after_crash(spool: Spool, tmp_path: Path, clock: Clock) -> None:
    kept = spool.store(incoming("1.2.3.1"), b"a")
    gone = spool.store(incoming("1.2.3.2"), b"b")
    gone.unlink()
    leftover = kept.with_name(kept.name + TMP_MARKER + "123")
    leftover.write_bytes(b"half")
    unknown = spool.instance_path(STUDY, SERIES, "1.2.3.9")
    unknown.write_bytes(b"whole")
    junk = kept.parent / "junk.dcm"
    junk.write_bytes(b"not dicom")
    preview_leftover = spool.outbox_dir / STUDY / "previews" / f"overlay-x.png{TMP_MARKER}7-8"
    preview_leftover.parent.mkdir(parents=True)
    preview_leftover.write_bytes(b"half a png")
    spool.mark_quiet_studies_ready(0)
    assert spool.claim_ready_study() == STUDY

    def read_uids(path: Path) -> IncomingInstance | None:
        return incoming(path.stem) if path.name != "junk.dcm" else None

    reopened = Spool(tmp_path, clock=clock)
    counts = reopened.reconcile(read_uids)
    assert counts == {"temp_removed": 2, "indexed": 1, "rows_dropped": 1, "requeued": 1, "unusable_removed": 1}
    assert not leftover.exists() and not junk.exists() and not preview_leftover.exists()
    assert sorted(r.sop_instance_uid for r in reopened.instances(STUDY)) == ["1.2.3.1", "1.2.3.9"]
    # The study that was processing when the node died is picked up again.
    assert reopened.study(STUDY).state in ("ready", "receiving")  # type: ignore[union-attr]


def test_outputs_lifecycle(spool: Spool, clock: Clock, tmp_path: Path) -> None:
    spool.add_output(STUDY, "1.2.840.10008.5.1.4.1.1.66.4", "2.25.1", tmp_path / "seg.dcm", "PACS@h:1")
    [due] = spool.due_outputs()
    assert due.state == "pending"
    assert spool.mark_output_failed(due.id, "down", retry_at=clock.now + 10) == "retrying"
    assert spool.due_outputs() == []
    clock.now += 11
    [again] = spool.due_outputs()
    assert again.attempts == 1
    assert spool.mark_output_failed(again.id, "rejected 0xA900", retry_at=None) == "dead"
    assert spool.due_outputs() == []
    assert spool.requeue_outputs([again.id]) == 1
    spool.mark_output_sent(spool.due_outputs()[0].id)
    [sent] = spool.outputs(STUDY)
    assert sent.state == "sent"
    # Re-adding the same result (re-processing) replaces it and queues it again, never twice.
    spool.add_output(STUDY, "1.2.840.10008.5.1.4.1.1.66.4", "2.25.1", tmp_path / "seg.dcm", "PACS@h:1")
    assert [o.state for o in spool.outputs(STUDY)] == ["pending"]
    assert spool.requeue_outputs([sent.id], destination="OTHER@h:2") == 1
    assert sorted(o.destination for o in spool.outputs(STUDY)) == ["OTHER@h:2", "PACS@h:1"]
