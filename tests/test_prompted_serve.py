"""The radiologist's loop over real peers: Orthanc, its Lua forwarding rule, and the node (``serve``).

Orthanc sends a study to the node (C-STORE) and gets the automatic SEG and SR back. Then a report with a
rectangle drawn around the lesion is stored in Orthanc (over REST, as a viewer's STOW-RS would); the
shipped Lua rule forwards it to the node, which answers with a prompted SEG and SR of their own series,
and only the drawn region is computed. A report whose only rectangle is degenerate is answered by an SR
alone that says why the region was not used. The node's own SRs, arriving in Orthanc, are not forwarded, and
sent to the node directly they are not answered (loop guard). A rectangle drawn on an image the node
never received makes it fetch the study from Orthanc (C-MOVE) and answer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from dicom_checks import assert_dciodvfy_clean
from engine_fixtures import dice
from peers import running_node, running_orthanc
from test_prompted import MIN_DICE, lesion_box, not_used_texts

from samie_node.testing.drawn import rectangle_report
from samie_node.testing.sample_studies import ultrasound_image, write_datasets

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
LUA = Path(__file__).resolve().parents[1] / "config" / "orthanc" / "forward-sr-to-samie.lua"
PROMPTED_SEG_SERIES = 9904
PROMPTED_SR_SERIES = 9905


def segs_in(
    orthanc: Any, study_uid: str, series_number: int, count: int, timeout: float = 180, sop_class_uid: str = SEG_CLASS
) -> list[bytes]:
    """The SEG (or other ``sop_class_uid``) files of ``series_number`` in Orthanc's copy of the study, once
    there are ``count``."""
    deadline = time.monotonic() + timeout
    found: list[bytes] = []
    while time.monotonic() < deadline:
        found = []
        for item in orthanc.study_instances(study_uid):
            meta = orthanc.request("GET", f"/instances/{item['ID']}/simplified-tags")
            if meta.get("SOPClassUID") == sop_class_uid and int(meta.get("SeriesNumber") or 0) == series_number:
                found.append(orthanc.instance_file(item["ID"]))
        if len(found) >= count:
            return found
        time.sleep(1)
    raise TimeoutError(f"{len(found)} of {count} objects of series {series_number} arrived in Orthanc")


def segment_mask(seg: pydicom.Dataset, rows: int, columns: int) -> np.ndarray:
    return np.asarray(seg.pixel_array, bool).reshape(-1, rows, columns).any(axis=0)


def test_a_drawn_rectangle_comes_back_as_a_seg_through_orthanc(tmp_path: Path) -> None:
    image, lesion = ultrasound_image(rows=240, columns=320, seed=41)
    study_uid = str(image.StudyInstanceUID)
    later, later_lesion = ultrasound_image(rows=240, columns=320, seed=42)
    later.StudyInstanceUID = study_uid
    later.SeriesInstanceUID = pydicom.uid.generate_uid()
    paths = write_datasets([image, later], tmp_path / "images")
    report = rectangle_report(image, [lesion_box(lesion)], ["Lesion A"])
    on_later = rectangle_report(later, [lesion_box(later_lesion)], ["Lesion B"])
    report_paths = write_datasets([report, on_later], tmp_path / "reports")
    with (
        running_orthanc(tmp_path / "pacs", extra_config={"LuaScripts": [str(LUA)]}) as orthanc,
        running_node(
            tmp_path,
            send={"destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]},
            prompts={"retrieve_from": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"},
        ) as node,
    ):
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        orthanc.store_to("samie", [orthanc.upload(paths[0])])
        node.wait_for_study(study_uid, {"done"})
        automatic = segs_in(orthanc, study_uid, 9901, 1)
        assert len(automatic) == 1
        # The node's own SR reached Orthanc over DICOM; the Lua rule did not send it back.
        time.sleep(2)
        assert "skipping" in orthanc.log_path.read_text(errors="replace")
        # The radiologist's report: forwarded by the Lua rule, answered with the drawn region only.
        orthanc.upload(report_paths[0])
        seg_file = segs_in(orthanc, study_uid, PROMPTED_SEG_SERIES, 1)[0]
        (tmp_path / "prompted.dcm").write_bytes(seg_file)
        assert_dciodvfy_clean(tmp_path / "prompted.dcm")
        seg = pydicom.dcmread(tmp_path / "prompted.dcm")
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion A"]
        assert dice(segment_mask(seg, 240, 320), lesion.mask(240, 320)) >= MIN_DICE
        status = node.wait_for_study(study_uid, {"done"})
        assert str(report.SOPInstanceUID) in status["result"]["answered_annotations"]
        assert "only the drawn regions are computed" in node.log()
        # Only a degenerate rectangle: the answer is an SR alone, saying why the region was not used.
        degenerate = rectangle_report(image, [(10.0, 10.0, 10.0, 40.0)])
        orthanc.upload(write_datasets([degenerate], tmp_path / "degenerate")[0])
        srs = segs_in(orthanc, study_uid, PROMPTED_SR_SERIES, 2, sop_class_uid=SR_CLASS)
        bad_uid = str(degenerate.SOPInstanceUID)
        answer = next(b for b in srs if bad_uid.encode() in b)
        (tmp_path / "not-used.dcm").write_bytes(answer)
        assert_dciodvfy_clean(tmp_path / "not-used.dcm")
        assert not_used_texts(pydicom.dcmread(tmp_path / "not-used.dcm")) == [
            f"Not used: measurement group 1 of annotation {bad_uid}: the outline has no area "
            "(its 2 distinct point(s) lie on one line)"
        ]
        assert len(segs_in(orthanc, study_uid, PROMPTED_SEG_SERIES, 1)) == 1  # no SEG for it
        # A rectangle on an image only Orthanc has: the node fetches the study (C-MOVE) and answers.
        orthanc.upload(paths[1])
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        orthanc.upload(report_paths[1])
        answers = segs_in(orthanc, study_uid, PROMPTED_SEG_SERIES, 2)
        later_seg = next(
            ds
            for ds in (pydicom.dcmread(pydicom.filebase.DicomBytesIO(b)) for b in answers)
            if ds.SegmentSequence[0].SegmentLabel == "Lesion B"
        )
        assert dice(segment_mask(later_seg, 240, 320), later_lesion.mask(240, 320)) >= MIN_DICE
        assert "retrieving study_instance_uid" in node.log()
