"""``samie-node serve`` as a subprocess, talked to by dcmtk tools and by Orthanc, killed and restarted."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
from peers import require_tool, running_node, running_orthanc
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from samie_node.spool import TMP_MARKER
from samie_node.testing.sample_studies import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_series, write_datasets

# pydicom's bundled files in several transfer syntaxes; each must be stored exactly as sent.
TEST_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "examples_ybr_color.dcm",  # multi-frame YBR JPEG
    "examples_palette.dcm",  # palette colour
    "examples_rgb_color.dcm",  # ultrasound RGB
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
]


def spool_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "spool").rglob("*") if p.is_file())


# storescu proposes uncompressed syntaxes unless told which compressed one to offer.
PROPOSE = {
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.5": ["-xr"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
}


def test_echoscu_and_storescu_against_serve(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    storescu = require_tool("storescu")
    files = [Path(str(get_testdata_file(name))) for name in TEST_FILES]
    with running_node(tmp_path) as node:
        subprocess.run([echoscu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port)], check=True, timeout=30)
        syntaxes = set()
        for original_path in files:
            original = pydicom.dcmread(original_path)
            syntax = str(original.file_meta.TransferSyntaxUID)
            syntaxes.add(syntax)
            # -R proposes only what the file needs; PROPOSE makes storescu offer the file's own syntax.
            subprocess.run(
                [
                    storescu,
                    "-aec",
                    "SAMIE_NODE",
                    "-R",
                    *PROPOSE[syntax],
                    "127.0.0.1",
                    str(node.port),
                    str(original_path),
                ],
                check=True,
                timeout=60,
            )
            stored = {p.stem: p for p in spool_files(node.data_dir)}
            copy = pydicom.dcmread(stored[original.SOPInstanceUID])
            assert copy.file_meta.TransferSyntaxUID == syntax, original_path.name
            assert copy.PixelData == original.PixelData, original_path.name
        assert len(syntaxes) >= 9
        # A dataset without Study/Series Instance UID cannot be filed: refused, nothing written.
        before = spool_files(node.data_dir)
        no_uids = subprocess.run(
            [
                storescu,
                "-aec",
                "SAMIE_NODE",
                "-R",
                "-xu",
                "127.0.0.1",
                str(node.port),
                str(get_testdata_file("JPEGLSNearLossless_16.dcm")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_uids.returncode != 0
        assert "status=0xC210" in node.log()
        assert spool_files(node.data_dir) == before
        # MR_small in three syntaxes shares one SOP Instance UID: duplicates replace, the index counts one.
        uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
        assert sum(s["instances"] for s in node.status()) == len(uids) == len(spool_files(node.data_dir))
        # The node's own C-ECHO SCU against the node itself.
        out = subprocess.run(
            [sys.executable, "-m", "samie_node", "echo", node.peer], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "success" in out.stdout
        assert node.alive()


def test_wrong_called_ae_and_deflate_are_refused_cleanly(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    with running_node(tmp_path) as node:
        ct = str(get_testdata_file("CT_small.dcm"))
        wrong = subprocess.run(
            [storescu, "-aec", "OTHER", "127.0.0.1", str(node.port), ct], capture_output=True, text=True, timeout=60
        )
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stderr + wrong.stdout
        # Deflated explicit VR is not accepted (unbounded inflation): a context offering only it is refused.
        ae = AE(ae_title="DEFLATER")
        ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1.99")]
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SAMIE_NODE")
        try:
            assert assoc.accepted_contexts == []
            assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == ["1.2.840.10008.5.1.4.1.1.7"]
        finally:
            if assoc.is_established:
                assoc.release()
        assert spool_files(node.data_dir) == []
        assert node.alive()
        subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), ct], check=True, timeout=60)
        assert len(spool_files(node.data_dir)) == 1


def test_generated_ct_series_becomes_ready_and_logs_carry_no_phi(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    datasets, _ = ct_series(slices=30, rows=256, columns=256)
    paths = write_datasets(datasets, tmp_path / "ct")
    with running_node(tmp_path) as node:
        # The study arrives over two associations; the end of an association is not the end of a study.
        subprocess.run(
            [storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), *map(str, paths[:10])],
            check=True,
            timeout=120,
        )
        subprocess.run(
            [storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), *map(str, paths[10:])],
            check=True,
            timeout=120,
        )
        study = node.wait_for_study(datasets[0].StudyInstanceUID, {"ready", "processing", "done"})
        assert study["instances"] == 30
        log = node.log() + (node.data_dir / "audit.jsonl").read_text()
        assert datasets[0].StudyInstanceUID in log
        for phi in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "SYNTHETIC", "PHANTOM"):
            assert phi not in log


def test_orthanc_pushes_a_study_to_the_node(tmp_path: Path) -> None:
    datasets, _ = ct_series(slices=12, rows=128, columns=128, seed=7)
    paths = write_datasets(datasets, tmp_path / "ct")
    with (
        running_node(tmp_path) as node,
        running_orthanc(tmp_path / "pacs", modalities={"samie": ("SAMIE_NODE", "127.0.0.1", node.port)}) as orthanc,
    ):
        ids = [orthanc.upload(p) for p in paths]
        orthanc.store_to("samie", ids)
        study = node.wait_for_study(datasets[0].StudyInstanceUID, {"ready", "processing", "done"})
        assert study["instances"] == len(paths)
        received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in spool_files(node.data_dir)}
        assert received == {d.SOPInstanceUID for d in datasets}
        assert "ORTHANC" in (node.data_dir / "audit.jsonl").read_text()


def _send_all(port: int, paths: list[Path], acknowledged: list[str], done: threading.Event) -> None:
    """Send files one by one, recording each SOP Instance UID the node acknowledged with Success."""
    ae = AE(ae_title="CRASHTEST")
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="SAMIE_NODE")
        if not assoc.is_established:
            return
        for path in paths:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0:
                break
            acknowledged.append(path.stem)
        if assoc.is_established:
            assoc.release()
    except (OSError, RuntimeError, ValueError):
        pass  # the node was killed under us: that is the point of the test
    finally:
        done.set()


def test_kill_9_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    datasets, _ = ct_series(slices=200, rows=256, columns=256, seed=3)
    paths = write_datasets(datasets, tmp_path / "ct")
    study_uid = datasets[0].StudyInstanceUID
    acknowledged: list[str] = []
    done = threading.Event()
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with running_node(tmp_path) as node:
            sender = threading.Thread(target=_send_all, args=(node.port, paths, acknowledged, done))
            sender.start()
            deadline = time.monotonic() + 120
            while len(acknowledged) < 60 and time.monotonic() < deadline and not done.is_set():
                time.sleep(0.01)
            node.kill9()
            sender.join(60)
            assert 60 <= len(acknowledged) < 200, "the kill must land mid-transfer"
            # Restart on the same data: every acknowledged instance is on disk, whole, and indexed.
            node.start()
            on_disk = {p.stem: p for p in spool_files(node.data_dir)}
            assert not [name for name in on_disk if TMP_MARKER in name]
            for sop in acknowledged:
                assert sop in on_disk
                assert (
                    pydicom.dcmread(on_disk[sop]).PixelData == pydicom.dcmread(tmp_path / "ct" / f"{sop}.dcm").PixelData
                )
            for path in on_disk.values():  # nothing half-written, acknowledged or not
                pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding proves the file is whole
            status = {s["study_instance_uid"]: s for s in node.status()}
            assert status[study_uid]["instances"] >= len(acknowledged)
            # The sender re-sends everything; duplicates replace; the study completes.
            resent: list[str] = []
            again = threading.Event()
            _send_all(node.port, paths, resent, again)
            assert len(resent) == 200
            study = node.wait_for_study(study_uid, {"ready", "processing", "done"})
            assert study["instances"] == 200
            assert len(spool_files(node.data_dir)) == 200
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
