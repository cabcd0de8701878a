"""The radiologist's loop in the real viewer: draw a rectangle in OHIF, get a segmentation back.

OHIF (prebuilt ``@ohif/app`` in headless chromium) opens a generated ultrasound study from Orthanc (with
its DICOMweb plugin and the shipped Lua rule), draws a RectangleROI around the lesion, and "Create SR"
stores the report in Orthanc over STOW-RS. The Lua rule forwards it to the node, and the node's prompted
SEG must arrive in Orthanc with the lesion inside the drawn rectangle (Dice with the known disc). A second
rectangle drawn away from the lesion must give a mask inside that rectangle and not on the lesion
(negative control).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from engine_fixtures import dice
from peers import running_node
from test_prompted import MIN_DICE, lesion_box
from test_prompted_serve import LUA, PROMPTED_SEG_SERIES, segs_in
from viewer_support import run_driver, running_dicomweb_orthanc, running_viewer

from samie_node.testing.sample_studies import ultrasound_image, write_datasets

pytestmark = pytest.mark.slow

ROWS, COLUMNS = 256, 256


def draw(url: str, study: str, image: str, rect: tuple[float, ...], label: str, out: Path) -> dict[str, object]:
    """Run ``draw.mjs``: OHIF draws ``rect`` (image coordinates) on ``image`` and stores the report."""
    plan = {"url": url, "study": study, "image": image, "rect": list(rect), "label": label}
    return run_driver("draw.mjs", {**plan, "report_name": f"drawn {label}"}, out, timeout=300)


def inside(mask: np.ndarray, rect: tuple[float, ...], slack: float = 1.0) -> bool:
    rows, columns = np.nonzero(mask)
    x0, y0, x1, y1 = rect
    return bool(
        columns.min() >= x0 - slack
        and columns.max() <= x1 + slack
        and rows.min() >= y0 - slack
        and rows.max() <= y1 + slack
    )


def labelled_mask(segs: list[pydicom.Dataset], label: str) -> np.ndarray:
    """The mask of the segment named ``label`` in any of ``segs`` (a report may hold earlier drawings too)."""
    for seg in segs:
        numbers = {int(s.SegmentNumber) for s in seg.SegmentSequence if s.SegmentLabel == label}
        if numbers:
            frames = np.asarray(seg.pixel_array, bool).reshape(-1, ROWS, COLUMNS)
            shared = seg.SharedFunctionalGroupsSequence[0]
            chosen = [
                i
                for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
                if int(
                    (item if "SegmentIdentificationSequence" in item else shared)
                    .SegmentIdentificationSequence[0]
                    .ReferencedSegmentNumber
                )
                in numbers
            ]
            return frames[chosen].any(axis=0)
    raise AssertionError(f"no segment named {label!r} in {len(segs)} prompted SEG(s)")


def test_a_rectangle_drawn_in_ohif_comes_back_as_a_segmentation(tmp_path: Path) -> None:
    image, lesion = ultrasound_image(rows=ROWS, columns=COLUMNS, seed=51)
    study = str(image.StudyInstanceUID)
    path = write_datasets([image], tmp_path / "images")[0]
    around = lesion_box(lesion, 6.0)
    away = (12.0, 12.0, 62.0, 52.0)
    with (
        running_dicomweb_orthanc(tmp_path / "pacs", extra_config={"LuaScripts": [str(LUA)]}) as orthanc,
        running_node(
            tmp_path,
            send={"destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]},
        ) as node,
        running_viewer(f"http://127.0.0.1:{orthanc.http_port}/dicom-web", log_path=tmp_path / "viewer.log") as url,
    ):
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        orthanc.store_to("samie", [orthanc.upload(path)])  # processed before anything is drawn
        node.wait_for_study(study, {"done"})
        segs_in(orthanc, study, 9901, 1)
        drawn: list[np.ndarray] = []
        for count, (rect, label) in enumerate(((around, "lesion"), (away, "elsewhere")), start=1):
            result = draw(url, study, str(image.SOPInstanceUID), rect, label, tmp_path / f"draw-{label}")
            assert result.get("stow"), result
            files = segs_in(orthanc, study, PROMPTED_SEG_SERIES, count)
            drawn.append(labelled_mask([pydicom.dcmread(pydicom.filebase.DicomBytesIO(f)) for f in files], label))
        truth = lesion.mask(ROWS, COLUMNS)
        on_lesion = drawn[0]
        assert dice(on_lesion, truth) >= MIN_DICE and inside(on_lesion, around)
        off = drawn[1]
        assert off.any() and inside(off, away) and dice(off, truth) < 0.1
        assert node.alive()
