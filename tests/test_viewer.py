"""The radiologist's view: the node's SEG and SR, as the OHIF viewer shows them.

Three generated studies (a CT series, a single-frame ultrasound image without a frame of reference and an
RGB photograph) go from a real PACS (Orthanc with its DICOMweb plugin) to the node, and its SEG and SR
come back into the same studies. OHIF (the prebuilt viewer of npm ``@ohif/app``) then opens each study in
headless chromium, as a person would: it loads the SEG (double-click, "Yes") and, in a fresh load, the SR.
The checks read the screenshots: the segment colour must cover the screen pixels over the mask the SEG
holds and be absent far from it; the SR's outline must be drawn on its image with the numbers of its
region group beside it. A deliberately shifted SEG proves the pixel check fails when the overlay is not
where it should be.

Screenshots are written to ``tests/viewer/screenshots-latest/``, with ``what-the-radiologist-sees.png``
(the ultrasound's SEG and SR views side by side), which the README shows from ``docs/``.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from peers import running_node
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from viewer_support import (
    SCREENSHOTS,
    ScreenGeometry,
    check_overlay,
    drive,
    image_contrast,
    load_png,
    outline_drawn,
    require_viewer_parts,
    running_dicomweb_orthanc,
    running_viewer,
    side_by_side,
    wait_for_results,
)

from samie_node.encode.seg import AlgorithmInfo, SegmentSpec, build_segmentation, plan_units
from samie_node.encode.templates import load_templates
from samie_node.testing.sample_studies import Lesion, ct_series, rgb_photograph, ultrasound_image, write_datasets
from samie_node.uids import derive_uid

pytestmark = pytest.mark.slow

KINDS = ("ct", "ultrasound", "photograph")  # generated, with a known lesion
REPORTED = (*KINDS, "real_ct")  # pydicom's CT_small too: a real thoracic slice
#: Where CT_small's structures lie, (column0, row0, column1, row1) in its 128 x 128 pixels, read off the
#: image (the README's contact sheet shows it): the vertebral body, the spinal canal, the descending aorta.
CT_SMALL_STRUCTURES = {
    "vertebral body": (44, 6, 78, 46),
    "spinal canal": (48, 42, 70, 62),
    "aorta": (84, 0, 112, 24),
}
SEG_DESCRIPTION = load_templates().segments.series_description
SR_DESCRIPTION = load_templates().report.series_description
SEGMENT_RGB: tuple[int, int, int] = load_templates().segments.colour(1)  # region 1, the largest


@dataclass
class Case:
    """One study as the node returned it and as the viewer showed it."""

    name: str
    sources: list[Dataset]
    lesion: Lesion | None
    seg: hd.seg.Segmentation | None = None
    sr: Dataset | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def study_instance_uid(self) -> str:
        return str(self.sources[0].StudyInstanceUID)

    def shot(self, name: str) -> np.ndarray:
        return load_png(SCREENSHOTS / name)

    def require_view(self, part: str) -> dict[str, Any]:
        if self.view.get("failure"):
            pytest.fail(
                f"OHIF did not get through the {self.name} study: {self.view['failure']} "
                f"(see {SCREENSHOTS / str(self.view.get('failure_screenshot'))}; "
                f"browser errors: {self.view.get('errors')})"
            )
        if part not in self.view:
            pytest.fail(f"no {part} step was recorded for {self.name}: {self.view}")
        return dict(self.view[part])


@dataclass
class Session:
    cases: dict[str, Case]
    control: Case
    timings: dict[str, float]


def _studies() -> dict[str, tuple[list[Dataset], Lesion | None]]:
    ct, ct_lesion = ct_series(slices=6, rows=128, columns=128, seed=71)
    us, us_lesion = ultrasound_image(rows=300, columns=400, seed=72)
    photo, photo_lesion = rgb_photograph(rows=320, columns=320, seed=73)
    real_ct = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    return {
        "ct": (ct, ct_lesion),
        "ultrasound": ([us], us_lesion),
        "photograph": ([photo], photo_lesion),
        "real_ct": ([real_ct], None),
    }


def shifted_control(folder: Path) -> tuple[Case, list[Path]]:
    """A photograph of another (synthetic) patient with a SEG whose mask is moved far from the lesion."""
    photo, lesion = rgb_photograph(rows=320, columns=320, seed=74)
    photo.PatientID = "SAMIE-CONTROL-0001"
    photo.PatientName = "CONTROL^SHIFTED"
    rows, columns = int(photo.Rows), int(photo.Columns)
    shifted = np.roll(lesion.mask(rows, columns), (rows // 3, columns // 3), axis=(0, 1))
    assert not (shifted & lesion.mask(rows, columns)).any()
    [unit] = plan_units([photo])
    study = str(photo.StudyInstanceUID)
    seg = build_segmentation(
        unit,
        {unit.frame_keys[0]: shifted[None]},
        [SegmentSpec(1, "Region 1", SEGMENT_RGB)],
        templates=load_templates(),
        algorithm=AlgorithmInfo("negative control", "shifted by a third of the image", "0" * 64),
        series_instance_uid=derive_uid(study, "shifted-seg-series"),
        sop_instance_uid=derive_uid(study, "shifted-seg"),
        series_number=9901,
        instance_number=1,
        manufacturer="samie-node tests",
        keep_empty_frames=True,
    )
    paths = write_datasets([photo, seg], folder)
    return Case("shifted-control", [photo], lesion, seg=hd.seg.segread(paths[1])), paths


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    require_viewer_parts()
    tmp = tmp_path_factory.mktemp("viewer")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    timings: dict[str, float] = {}
    cases = {name: Case(name, sources, lesion) for name, (sources, lesion) in _studies().items()}
    control, control_paths = shifted_control(tmp / "control")
    with (
        running_dicomweb_orthanc(tmp / "pacs") as orthanc,
        running_node(tmp, send={"return_to_caller": True, "return_port": orthanc.dicom_port}) as node,
    ):
        started = time.monotonic()
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        for case in cases.values():
            paths = write_datasets(case.sources, tmp / case.name)
            orthanc.store_to("samie", [orthanc.upload(p) for p in paths])
        for case in cases.values():
            returned = wait_for_results(orthanc, case.study_instance_uid)
            assert len(returned["SEG"]) == 1 and len(returned["SR"]) == 1, {k: len(v) for k, v in returned.items()}
            case.seg = hd.seg.segread(io.BytesIO(returned["SEG"][0]))
            case.sr = pydicom.dcmread(io.BytesIO(returned["SR"][0]))
        timings["node: four studies to SEG and SR in Orthanc (s)"] = time.monotonic() - started
        for path in control_paths:
            orthanc.upload(path)
        views = [
            {
                "name": case.name,
                "study": case.study_instance_uid,
                "image": _image_to_show(case),
                "seg": SEG_DESCRIPTION,
                "sr": SR_DESCRIPTION,
            }
            for case in cases.values()
        ]
        views.append(
            {
                "name": control.name,
                "study": control.study_instance_uid,
                "image": None,
                "seg": SEG_DESCRIPTION,
                "sr": None,
            }
        )
        started = time.monotonic()
        with running_viewer(f"http://127.0.0.1:{orthanc.http_port}/dicom-web", log_path=tmp / "viewer.log") as url:
            driven = drive(url, views, SCREENSHOTS)
        timings["browser: OHIF through seven study loads (s)"] = time.monotonic() - started
    for view in driven["views"]:
        (cases.get(view["name"]) or control).view = view
    ultrasound = cases["ultrasound"].view
    if "seg" in ultrasound and "sr" in ultrasound:
        side_by_side(
            [SCREENSHOTS / ultrasound["seg"]["after"], SCREENSHOTS / ultrasound["sr"]["screenshot"]],
            [ultrasound["seg"]["geometry"]["viewport"], ultrasound["sr"]["geometry"]["viewport"]],
            SCREENSHOTS / "what-the-radiologist-sees.png",
        )
    (SCREENSHOTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print("viewer test timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    yield Session(cases, control, timings)


def _image_to_show(case: Case) -> str | None:
    """For a series, the middle image: the generated sphere's largest cross-section."""
    if len(case.sources) == 1:
        return None
    ordered = sorted(case.sources, key=lambda ds: int(ds.InstanceNumber))
    return str(ordered[len(ordered) // 2].SOPInstanceUID)


def _seg_mask(case: Case, geometry: ScreenGeometry) -> np.ndarray:
    """The mask the SEG holds for the image the viewer showed."""
    assert case.seg is not None
    sources = {str(s.SOPInstanceUID) for s in case.sources}
    assert geometry.sop_instance_uid in sources, "the viewer showed an image that is not one of the study's"
    pixels = case.seg.get_pixels_by_source_instance([geometry.sop_instance_uid], segment_numbers=[1])
    return np.asarray(pixels[0, ..., 0]).astype(bool)


@pytest.mark.parametrize("kind", KINDS)
def test_seg_overlay_lies_over_the_mask(session: Session, kind: str) -> None:
    case = session.cases[kind]
    seg_view = case.require_view("seg")
    assert seg_view["segmentations"] and seg_view["segmentations"][0]["segments"][0]["label"] == "Region 1"
    geometry = ScreenGeometry.from_driver(seg_view["geometry"])
    assert ScreenGeometry.from_driver(seg_view["geometry_before"]).same_placement(geometry), "the camera moved"
    mask = _seg_mask(case, geometry)
    before, after = case.shot(seg_view["before"]), case.shot(seg_view["after"])
    # The geometry is right: the mask lies on the lesion as the screenshot shows it.
    assert abs(image_contrast(before, geometry, mask)) > 20
    assert case.lesion is not None
    lesion = case.lesion.mask(geometry.rows, geometry.columns)
    assert (mask & lesion).sum() > 0.5 * min(mask.sum(), lesion.sum()), "the node's mask misses the lesion"
    check = check_overlay(before, after, geometry, mask, SEGMENT_RGB)
    assert check.ok, f"{kind}: {check}"
    assert not [e for e in case.view["errors"] if "Error Boundary" in e], case.view["errors"]


def _groups(sr: Dataset) -> Iterator[Dataset]:
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "126010":  # Imaging Measurements
            yield from (g for g in item.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007")


def _shown_finding(sr: Dataset) -> tuple[list[str], np.ndarray, str]:
    """What OHIF can show of the report: the labels of the measurement with an outline, the outline and
    its image. OHIF merges measurement groups by Tracking Unique Identifier."""
    merged: dict[str, list[Dataset]] = {}
    for group in _groups(sr):
        uid = next(i.UID for i in group.ContentSequence if i.ValueType == "UIDREF")
        merged.setdefault(uid, []).extend(group.ContentSequence)
    for items in merged.values():
        scoords = [i for i in items if i.ValueType == "SCOORD"]
        if not scoords:
            continue
        labels = [
            f"{i.ConceptNameCodeSequence[0].CodeMeaning}: {float(i.MeasuredValueSequence[0].NumericValue):.2f} "
            f"{i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue}"
            for i in items
            if i.ValueType == "NUM" and "MeasuredValueSequence" in i
        ]
        image = str(scoords[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        return labels[:5], np.array(scoords[0].GraphicData, dtype=float).reshape(-1, 2), image
    raise AssertionError("the report has no measurement with image coordinates: OHIF can show none of it")


def test_real_ct_shows_a_region_on_its_anatomy(session: Session) -> None:
    """pydicom's CT_small through Orthanc: OHIF draws a region on the vertebra, the canal or the aorta."""
    case = session.cases["real_ct"]
    assert case.seg is not None
    seg_view = case.require_view("seg")
    geometry = ScreenGeometry.from_driver(seg_view["geometry"])
    numbers = [int(item.SegmentNumber) for item in case.seg.SegmentSequence]
    pixels = case.seg.get_pixels_by_source_instance([geometry.sop_instance_uid], segment_numbers=numbers)[0]
    found = []
    for plane, number in enumerate(numbers):
        mask = np.asarray(pixels[..., plane]).astype(bool)
        if not mask.any():
            continue
        rows, columns = np.nonzero(mask)
        centre = (columns.mean(), rows.mean())
        for name, (c0, r0, c1, r1) in CT_SMALL_STRUCTURES.items():
            if c0 <= centre[0] <= c1 and r0 <= centre[1] <= r1:
                found.append((number, name, mask))
    assert found, "no region of the SEG lies on the vertebra, the spinal canal or the aorta"
    number, name, mask = found[0]
    before, after = case.shot(seg_view["before"]), case.shot(seg_view["after"])
    check = check_overlay(before, after, geometry, mask, load_templates().segments.colour(number))
    assert check.ok, f"region {number} ({name}) not drawn: {check}"


@pytest.mark.parametrize("kind", REPORTED)
def test_sr_findings_are_shown_beside_the_image(session: Session, kind: str) -> None:
    case = session.cases[kind]
    assert case.sr is not None
    sr_view = case.require_view("sr")
    labels, outline, image = _shown_finding(case.sr)
    geometry = ScreenGeometry.from_driver(sr_view["geometry"])
    # The SR opens on its key image, with the region's numbers beside the outline...
    assert geometry.sop_instance_uid == image
    assert sr_view["labels"] == labels
    assert any(label.startswith("Area: ") for label in labels)
    # ... and the outline is drawn where the SEG's region is.
    screenshot = case.shot(sr_view["screenshot"])
    assert outline_drawn(screenshot, geometry, outline) > 0.8
    mask = _seg_mask(case, geometry)
    inside = mask[
        np.clip(outline[:, 1].astype(int), 0, geometry.rows - 1),
        np.clip(outline[:, 0].astype(int), 0, geometry.columns - 1),
    ]
    assert inside.mean() > 0.9, "the SR outline does not follow the SEG's region"
    assert not [e for e in case.view["errors"] if "Error Boundary" in e], case.view["errors"]


def test_shifted_seg_is_caught_by_the_pixel_check(session: Session) -> None:
    """The negative control: a SEG moved a third of the image away from the lesion, loaded in OHIF."""
    control = session.control
    seg_view = control.require_view("seg")
    geometry = ScreenGeometry.from_driver(seg_view["geometry"])
    lesion = control.lesion.mask(geometry.rows, geometry.columns)
    before, after = control.shot(seg_view["before"]), control.shot(seg_view["after"])
    assert abs(image_contrast(before, geometry, lesion)) > 20  # the lesion is where the geometry says
    check = check_overlay(before, after, geometry, lesion, SEGMENT_RGB)
    assert not check.ok
    assert any(p.startswith("overlay absent over the region") for p in check.problems), check
    assert any(p.startswith("overlay present far from the region") for p in check.problems), check
    # The overlay is there, where the shifted SEG put it.
    assert check_overlay(before, after, geometry, _seg_mask(control, geometry), SEGMENT_RGB).ok


def test_pixel_check_on_a_drawn_overlay() -> None:
    """The check itself, on a synthetic screenshot: an image scaled 2x with an opacity-0.5 overlay."""
    geometry = ScreenGeometry(
        origin=np.array([10.0, 20.0]),
        column_step=np.array([2.0, 0.0]),
        row_step=np.array([0.0, 2.0]),
        rows=60,
        columns=80,
        viewport=(0, 0, 200, 160),
        sop_instance_uid="1.2.3",
        frame_number=1,
    )
    before = np.zeros((200, 240, 3), np.uint8)
    before[20:140, 10:170] = 90
    mask = Lesion(30, 40, 12).mask(60, 80)
    after = before.copy()
    drawn = np.kron(mask, np.ones((2, 2), bool))
    region = after[20:140, 10:170]
    region[drawn] = (0.5 * region[drawn] + 0.5 * np.array(SEGMENT_RGB)).astype(np.uint8)
    assert check_overlay(before, after, geometry, mask, SEGMENT_RGB).ok
    moved = np.roll(mask, 25, axis=1)
    problems = check_overlay(before, after, geometry, moved, SEGMENT_RGB).problems
    assert problems and problems[0].startswith("overlay absent over the region")
    assert not check_overlay(before, before, geometry, mask, SEGMENT_RGB).ok  # the SEG did not load
