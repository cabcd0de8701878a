"""Data directories for the retention tests: studies in every state, written through the real spool.

Studies are stored, processed and delivered through the spool's own methods (the states a running node
leaves behind), with a clock set in the past, so the tests need no model and no waiting. The check at
the end, :func:`assert_index_agrees_with_disk`, is what "the index and the disk agree" means.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.filebase import DicomBytesIO

from samie_node.files import TMP_MARKER
from samie_node.spool import IncomingInstance, Spool
from samie_node.testing.sample_studies import ct_series

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
DESTINATION = "PACS@127.0.0.1:4242"


class Clock:
    """A wall clock the test sets by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Outcome = Literal["done", "failed", "processing", "receiving"]


@dataclass(frozen=True)
class SeededStudy:
    """A study written into a data directory, with what it holds."""

    study_instance_uid: str
    instance_paths: list[Path]
    output_paths: list[Path]
    instance_bytes: int


def ct_bytes(slices: int, size: int, seed: int) -> list[tuple[IncomingInstance, bytes]]:
    """A generated CT series as the encoded files a PACS sends, with what the receiver knows of each."""
    datasets, _lesion = ct_series(slices, size, size, seed=seed)
    encoded = []
    for ds in datasets:
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        incoming = IncomingInstance(
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        )
        encoded.append((incoming, buffer.getvalue()))
    return encoded


def seed_study(
    spool: Spool,
    clock: Clock,
    *,
    seed: int,
    outcome: Outcome = "done",
    outputs: Sequence[Literal["sent", "pending", "retrying", "dead"]] = ("sent",),
    slices: int = 3,
    size: int = 64,
) -> SeededStudy:
    """Store a CT study, process it to ``outcome`` and give it one SEG per entry of ``outputs`` in that
    delivery state, at the clock's current time."""
    instances = ct_bytes(slices, size, seed)
    uid = instances[0][0].study_instance_uid
    paths = [spool.store(incoming, data) for incoming, data in instances]
    size_on_disk = sum(p.stat().st_size for p in paths)
    if outcome == "receiving":
        return SeededStudy(uid, paths, [], size_on_disk)
    assert spool.mark_quiet_studies_ready(0) == [uid]
    assert spool.claim_ready_study() == uid
    if outcome == "processing":
        return SeededStudy(uid, paths, [], size_on_disk)
    output_paths = []
    for index, state in enumerate(outputs if outcome == "done" else ()):
        path = spool.outbox_dir / uid / f"2.25.{seed}{index}.dcm"
        spool.write_atomically(path, instances[0][1])
        spool.add_output(uid, SEG, f"2.25.{seed}{index}", path, DESTINATION)
        [output] = [o for o in spool.outputs(uid) if o.sop_instance_uid == f"2.25.{seed}{index}"]
        if state == "sent":
            spool.mark_output_sent(output.id)
        elif state != "pending":
            spool.mark_output_failed(output.id, "peer down", retry_at=clock.now + 3600 if state == "retrying" else None)
        output_paths.append(path)
    if outcome == "done":
        preview = spool.outbox_dir / uid / "previews" / "overlay-1.png"
        spool.write_atomically(preview, b"\x89PNG not really")
        output_paths.append(preview)
    spool.finish_study(uid, outcome, "no usable images" if outcome == "failed" else "", {})
    return SeededStudy(uid, paths, output_paths, size_on_disk)


def files_under(folder: Path) -> set[Path]:
    """Every file under ``folder``."""
    return {p for p in folder.rglob("*") if p.is_file()}


def assert_index_agrees_with_disk(data_dir: Path) -> None:
    """Every indexed instance and unpurged result has its file; every file in the spool has its row; no
    purge is left half done; a purged study has no instance left on disk."""
    db = sqlite3.connect(data_dir / "index.sqlite3")
    try:
        rows = {Path(p) for (p,) in db.execute("SELECT path FROM instances")}
        on_disk = {p for p in files_under(data_dir / "spool") if TMP_MARKER not in p.name}
        assert rows == on_disk, f"rows without files: {rows - on_disk}; files without rows: {on_disk - rows}"
        outputs = [Path(p) for (p,) in db.execute("SELECT path FROM outputs WHERE purged_at IS NULL")]
        assert all(p.exists() for p in outputs), [p for p in outputs if not p.exists()]
        assert db.execute("SELECT COUNT(*) FROM purges").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM instances WHERE purging = 1").fetchone()[0] == 0
        for (uid,) in db.execute("SELECT study_instance_uid FROM studies WHERE state = 'purged'"):
            assert not files_under(data_dir / "spool" / uid), uid
    finally:
        db.close()


def audit_events(data_dir: Path, event: str) -> list[dict[str, object]]:
    """The audit trail's records of one event."""
    lines = (data_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (for an effect of another process); fail naming ``what`` when it never holds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
