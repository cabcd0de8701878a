"""The operator's commands: resend, process, retrieve and demo, run as an operator runs them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
from dicom_checks import assert_dciodvfy_clean
from peers import free_port, running_node, running_orthanc
from pydicom.data import get_testdata_file

from samie_node.audit import AuditLog
from samie_node.config import load_settings
from samie_node.engine.demo_classifier import DEMO_CLASSIFIER_NAME, DEMO_CLASSIFIER_SHA256
from samie_node.net.send import Sender
from samie_node.spool import Spool
from samie_node.testing.pacs import StoreSCP
from samie_node.testing.sample_studies import ct_series, rgb_photograph, ultrasound_image, write_datasets


def samie(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "samie_node", *args], capture_output=True, text=True, timeout=timeout)


def queued_outbox(tmp_path: Path, port: int) -> tuple[Path, list[str]]:
    """A data dir whose outbox holds two results for a PACS that was down (state retrying)."""
    data = tmp_path / "data"
    spool = Spool(data, fsync=False)
    uids = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        source = Path(str(get_testdata_file(name)))
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        target = spool.outbox_dir / "1.2.3" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        spool.add_output("1.2.3", str(ds.SOPClassUID), str(ds.SOPInstanceUID), target, f"TESTPACS@127.0.0.1:{port}")
        uids.append(str(ds.SOPInstanceUID))
    settings = load_settings(None, {"node": {"data_dir": str(data)}, "send": {"timeout_s": 3}})
    Sender(settings, spool, AuditLog(None)).run_once()
    assert {o.state for o in spool.outputs()} == {"retrying"}
    spool.close()
    return data, uids


def test_resend_failed_after_outage(tmp_path: Path) -> None:
    port = free_port()
    data, uids = queued_outbox(tmp_path, port)
    dry = samie("resend", "--failed", "--dry-run", "--data-dir", str(data))
    assert dry.returncode == 0 and "2 result(s) would be re-sent" in dry.stdout
    still_down = samie("resend", "--failed", "--data-dir", str(data))
    assert still_down.returncode != 0, still_down.stdout
    assert "failed" in still_down.stdout
    spool = Spool(data, fsync=False)
    assert len(spool.outputs()) == 2 and all(o.path.exists() for o in spool.outputs())  # nothing lost
    assert {o.state for o in spool.outputs()} <= {"retrying", "dead"}
    pacs = StoreSCP(port).start()
    try:
        back = samie("resend", "--failed", "--data-dir", str(data))
        assert back.returncode == 0, back.stdout + back.stderr
        assert {o.state for o in spool.outputs()} == {"sent"}
        assert sorted(pacs.uids()) == sorted(uids)  # exactly once each
        # --to sends the same results to another destination, once more, by UID.
        other = StoreSCP(free_port(), ae_title="OTHER").start()
        try:
            again = samie("resend", "--study", "1.2.3", "--to", other.peer, "--data-dir", str(data))
            assert again.returncode == 0, again.stdout
            assert sorted(other.uids()) == sorted(uids)
            assert len(pacs.uids()) == 2
        finally:
            other.stop()
    finally:
        pacs.stop()


def test_process_folder_is_valid_and_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    ct, _ = ct_series(slices=3, rows=128, columns=128, seed=31)
    us, _ = ultrasound_image(rows=200, columns=240, seed=32)
    photo, _ = rgb_photograph(rows=160, columns=160, seed=33)
    write_datasets(ct, folder / "ct")
    write_datasets([us], folder / "us")
    write_datasets([photo], folder / "photo")
    (folder / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    first = samie("process", str(folder), "--out", str(out), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["unusable_files"] == 1
    assert sorted(s["state"] for s in report["studies"]) == ["done", "done", "done"]
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 6  # one SEG and one SR per study
    for path in files:
        assert_dciodvfy_clean(path)
    assert list(out.rglob("previews/*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    second = samie("process", str(folder), "--out", str(out), "--json")
    assert second.returncode == 0
    assert sorted(s["state"] for s in json.loads(second.stdout)["studies"]) == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.dcm"))} == before  # nothing rewritten
    forced = samie("process", str(folder / "us"), "--out", str(out), "--force", "--json")
    assert [s["state"] for s in json.loads(forced.stdout)["studies"]] == ["done"]
    assert sorted(out.rglob("*.dcm")) == files  # same UIDs, same files


def test_process_sends_to_a_destination(tmp_path: Path) -> None:
    us, _ = ultrasound_image(rows=160, columns=200, seed=34)
    [path] = write_datasets([us], tmp_path / "in")
    pacs = StoreSCP(free_port()).start()
    try:
        done = samie("process", str(path), "--out", str(tmp_path / "out"), "--destination", pacs.peer)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(pacs.uids()) == 2
        assert {str(ds.StudyInstanceUID) for ds in pacs.received} == {str(us.StudyInstanceUID)}
    finally:
        pacs.stop()


def test_retrieve_by_move_and_by_get_from_orthanc(tmp_path: Path) -> None:
    ct, _ = ct_series(slices=2, rows=96, columns=96, seed=41)
    us, _ = ultrasound_image(rows=120, columns=160, seed=42)
    with running_orthanc(tmp_path / "pacs") as orthanc, running_node(tmp_path) as node:
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        for dataset in [*ct, us]:
            orthanc.upload(write_datasets([dataset], tmp_path / "upload")[0])
        moved = samie(
            "retrieve",
            orthanc.peer,
            "--study",
            str(ct[0].StudyInstanceUID),
            "--method",
            "move",
            "--config",
            str(node.config),
            timeout=300,
        )
        assert moved.returncode == 0, moved.stdout + moved.stderr
        study = node.wait_for_study(str(ct[0].StudyInstanceUID), {"done"}, timeout=300)
        assert study["instances"] == 2
        got = samie(
            "retrieve",
            orthanc.peer,
            "--study",
            str(us.StudyInstanceUID),
            "--method",
            "get",
            "--config",
            str(node.config),
            timeout=300,
        )
        assert got.returncode == 0, got.stdout + got.stderr
        study = node.wait_for_study(str(us.StudyInstanceUID), {"done"}, timeout=300)
        assert study["instances"] == 1
        none = samie("retrieve", orthanc.peer, "--study", "1.2.3.4.5.6.7", "--config", str(node.config))
        assert none.returncode != 0 and "no study matched" in none.stdout


def _texts(item: pydicom.Dataset) -> Iterator[str]:
    """Every TEXT value of the content tree (algorithm names and parameters among them)."""
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            yield str(child.TextValue)
        yield from _texts(child)


def test_demo_classifies_every_study_with_the_demonstration_model(tmp_path: Path) -> None:
    """``samie-node demo`` on a fresh machine: every study comes back classified by the packaged demonstration
    model, the output names it, and each SR codes the class and names the model and its checkpoint hash."""
    run = samie("demo", "--work-dir", str(tmp_path / "demo"), timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "NOT RETURNED" not in run.stdout and "no classifier" not in run.stdout
    for name in ("CT series", "ultrasound", "RGB photograph"):
        assert re.search(rf"results back for {name}: (benign|malignant)_appearing \((0\.\d\d|1\.00)\)", run.stdout), (
            name,
            run.stdout,
        )
    assert f"classifier: {DEMO_CLASSIFIER_NAME} (sha256 {DEMO_CLASSIFIER_SHA256})" in run.stdout
    pngs = [line.strip() for line in run.stdout.splitlines() if line.strip().endswith(".png")]
    assert pngs and all(Path(p).exists() for p in pngs)
    reports = [
        (path, ds)
        for path in sorted((tmp_path / "demo" / "pacs").rglob("*"))
        if path.is_file() and (ds := pydicom.dcmread(path, force=True)).get("Modality") == "SR"
    ]
    assert len(reports) == 3
    for path, sr in reports:
        assert_dciodvfy_clean(path)
        assert DEMO_CLASSIFIER_NAME in set(_texts(sr))
        assert f"classifier_sha256={DEMO_CLASSIFIER_SHA256}" in set(_texts(sr))
        coded = {
            item.ConceptCodeSequence[0].CodeValue
            for group in sr.ContentSequence[-1].ContentSequence
            for item in group.ContentSequence
            if item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodingSchemeDesignator == "99SAMIE"
        }
        assert coded in ({"DEMO-BENIGN"}, {"DEMO-MALIGNANT"}), coded
