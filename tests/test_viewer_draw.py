"""The radiologist's loop in the real viewer: draw a rectangle in OHIF, get a segmentation back, see it.

OHIF (prebuilt ``@ohif/app`` in headless chromium) opens a generated ultrasound study from Orthanc (with
its DICOMweb plugin and the shipped Lua rule), draws a RectangleROI around the lesion, and "Create SR"
stores the report in Orthanc over STOW-RS. The Lua rule forwards it to the node, and the node's prompted
SEG must arrive in Orthanc with the lesion inside the drawn rectangle (Dice with the known disc). A second
rectangle drawn away from the lesion must give a mask inside that rectangle and not on the lesion
(negative control). OHIF, reloaded on the study, then shows each prompted SEG as the viewer test loads
the automatic one (``drive.mjs``): the screenshots before and after loading must show the segment colour
over the SEG's mask, inside the rectangle drawn for it and not inside the other one.

Screenshots are written to ``tests/viewer/screenshots-latest/draw/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import viewer_support as viewer
from engine_fixtures import dice
from peers import running_node
from test_prompted import MIN_DICE, lesion_box
from test_prompted_serve import LUA, PROMPTED_SEG_SERIES, segs_in

from samie_node.encode.templates import load_templates
from samie_node.testing.sample_studies import ultrasound_image, write_datasets

pytestmark = pytest.mark.slow

ROWS, COLUMNS = 256, 256
SHOTS = viewer.SCREENSHOTS / "draw"


def draw(url: str, study: str, image: str, rect: tuple[float, ...], label: str, out: Path) -> dict[str, object]:
    """Run ``draw.mjs``: OHIF draws ``rect`` (image coordinates) on ``image`` and stores the report."""
    plan = {"url": url, "study": study, "image": image, "rect": list(rect), "label": label}
    return viewer.run_driver("draw.mjs", {**plan, "report_name": f"drawn {label}"}, out, timeout=300)


def inside(mask: np.ndarray, rect: tuple[float, ...], slack: float = 1.0) -> bool:
    rows, columns = np.nonzero(mask)
    x0, y0, x1, y1 = rect
    return bool(
        columns.min() >= x0 - slack
        and columns.max() <= x1 + slack
        and rows.min() >= y0 - slack
        and rows.max() <= y1 + slack
    )


@dataclass(frozen=True)
class PromptedSegment:
    """One drawn region as the node's prompted SEG holds it."""

    mask: np.ndarray
    number: int
    series_instance_uid: str
    series_description: str


def labelled_segment(segs: Sequence[pydicom.Dataset], label: str) -> PromptedSegment:
    """The segment named ``label`` in any of ``segs`` (a report may hold earlier drawings too)."""
    for seg in segs:
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence if s.SegmentLabel == label]
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
            return PromptedSegment(
                np.asarray(frames[chosen].any(axis=0)),
                numbers[0],
                str(seg.SeriesInstanceUID),
                str(seg.SeriesDescription),
            )
    raise AssertionError(f"no segment named {label!r} in {len(segs)} prompted SEG(s)")


def share_within(points: np.ndarray, rect: tuple[float, ...], slack: float) -> float:
    """Share of image (x, y) ``points`` inside ``rect`` grown by ``slack`` image pixels on each side."""
    x0, y0, x1, y1 = rect
    x, y = points[:, 0], points[:, 1]
    within = (x >= x0 - slack) & (x <= x1 + slack) & (y >= y0 - slack) & (y <= y1 + slack)
    return float(within.mean()) if len(points) else 0.0


def assert_shown_in(
    view: dict[str, Any], label: str, segment: PromptedSegment, rect: tuple[float, ...], other: tuple[float, ...]
) -> None:
    """The SEG's overlay, as OHIF drew it, covers the segment's mask, lies inside ``rect`` (the rectangle
    drawn for it) and not inside ``other``; it fails when the overlay is not drawn at all."""
    assert not view.get("failure"), f"OHIF did not show the prompted SEG: {view.get('failure')} (see {SHOTS})"
    shown = view["seg"]
    geometry = viewer.ScreenGeometry.from_driver(shown["geometry"])
    assert viewer.ScreenGeometry.from_driver(shown["geometry_before"]).same_placement(geometry), "the camera moved"
    assert label in [s["label"] for s in shown["segmentations"][0]["segments"]], shown["segmentations"]
    before, after = (
        viewer.load_png(SHOTS / "shown" / shown["before"]),
        viewer.load_png(SHOTS / "shown" / shown["after"]),
    )
    rgb = load_templates().segments.colour(segment.number)
    check = viewer.check_overlay(before, after, geometry, segment.mask, rgb)
    assert check.ok, f"{label}: {check}"
    tinted = viewer.tinted_pixels(before, after, geometry, rgb)
    # The colour covers at least half the mask's screen area (nothing drawn: nothing tinted, and this fails)...
    assert len(tinted) >= 0.5 * segment.mask.sum() * geometry.pixel_size**2, (len(tinted), int(segment.mask.sum()))
    # ... inside the drawn rectangle (give or take the outline on the mask's edge), not inside the other one.
    assert share_within(tinted, rect, slack=2.0) >= 0.98, share_within(tinted, rect, slack=2.0)
    assert share_within(tinted, other, slack=0.0) <= 0.01, share_within(tinted, other, slack=0.0)


def test_a_rectangle_drawn_in_ohif_comes_back_as_a_segmentation(tmp_path: Path) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    image, lesion = ultrasound_image(rows=ROWS, columns=COLUMNS, seed=51)
    study = str(image.StudyInstanceUID)
    path = write_datasets([image], tmp_path / "images")[0]
    around = lesion_box(lesion, 6.0)
    away = (12.0, 12.0, 62.0, 52.0)
    assert around[0] > away[2] + 4 or around[1] > away[3] + 4, "the rectangles must not touch"
    with (
        viewer.running_dicomweb_orthanc(tmp_path / "pacs", extra_config={"LuaScripts": [str(LUA)]}) as orthanc,
        running_node(
            tmp_path,
            send={"destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]},
        ) as node,
        viewer.running_viewer(
            f"http://127.0.0.1:{orthanc.http_port}/dicom-web", log_path=tmp_path / "viewer.log"
        ) as url,
    ):
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        orthanc.store_to("samie", [orthanc.upload(path)])  # processed before anything is drawn
        node.wait_for_study(study, {"done"})
        segs_in(orthanc, study, 9901, 1)
        drawn: list[PromptedSegment] = []
        for count, (rect, label) in enumerate(((around, "lesion"), (away, "elsewhere")), start=1):
            result = draw(url, study, str(image.SOPInstanceUID), rect, label, SHOTS / f"draw-{label}")
            assert result.get("stow"), result
            files = segs_in(orthanc, study, PROMPTED_SEG_SERIES, count)
            segs = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(f)) for f in files]
            drawn.append(labelled_segment(segs, label))
        # The radiologist opens the study again and loads each answer, as the viewer test loads the automatic SEG.
        views = [
            {
                "name": f"seg-{label}",
                "study": study,
                "image": str(image.SOPInstanceUID),
                "seg": segment.series_description,
                "seg_series": segment.series_instance_uid,
                "sr": None,
            }
            for segment, label in zip(drawn, ("lesion", "elsewhere"), strict=True)
        ]
        shown = viewer.drive(url, views, SHOTS / "shown", timeout=600)["views"]
        assert node.alive()
    truth = lesion.mask(ROWS, COLUMNS)
    on_lesion, off = drawn[0].mask, drawn[1].mask
    assert dice(on_lesion, truth) >= MIN_DICE and inside(on_lesion, around)
    assert off.any() and inside(off, away) and dice(off, truth) < 0.1
    assert_shown_in(shown[0], "lesion", drawn[0], around, away)
    assert_shown_in(shown[1], "elsewhere", drawn[1], away, around)
    # The check of the check: the screen geometry puts the lesion where the screenshot shows it.
    first = shown[0]["seg"]
    before = viewer.load_png(SHOTS / "shown" / first["before"])
    assert abs(viewer.image_contrast(before, viewer.ScreenGeometry.from_driver(first["geometry"]), truth)) > 20
