"""Reading what a radiologist drew: OHIF's SRs, highdicom's TID 1410/1411 SRs and presentation states.

The OHIF SRs are built here with pydicom to the structure OHIF 3.13.2's "Create SR" stored in Orthanc
(the content tree seen in a real run: Measurement Group > NUM Area > INFERRED FROM SCOORD > SELECTED FROM
IMAGE, Implicit VR, a Finding code value longer than SH allows). The TID 1410/1411 SRs and presentation
states are written by highdicom. In each case the boxes found must equal the boxes drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from samie_node.annotation_fit import fit, image_geometry, locate
from samie_node.annotations import BoxPrompt, read_annotations
from samie_node.testing.drawn import COMPREHENSIVE_SR, ENHANCED_SR, code, content_item, ohif_group, ohif_report
from samie_node.testing.sample_studies import ct_series, ultrasound_cine, ultrasound_image


def _boxes(prompts: Sequence[BoxPrompt]) -> list[tuple[float, ...]]:
    return [tuple(round(v, 3) for v in prompt.box) for prompt in prompts]


RUN2_RECTANGLE = [200.678, 40.136, 30.011, 40.136, 30.011, 229.966, 200.678, 229.966, 200.678, 40.136]


def test_ohif_rectangle_ellipse_circle_and_freehand() -> None:
    image, _ = ultrasound_image(rows=240, columns=320)
    freehand = [40.0, 50.0, 90.0, 45.0, 110.0, 100.0, 60.0, 130.0, 35.0, 90.0]
    rotated = [
        100 - 14.142,
        100 - 14.142,
        100 + 14.142,
        100 + 14.142,
        100 - 7.071,
        100 + 7.071,
        100 + 7.071,
        100 - 7.071,
    ]
    report = ohif_report(
        [
            ohif_group(image, "RectangleROI", "POLYLINE", RUN2_RECTANGLE, comment="lesion A"),
            ohif_group(
                image, "EllipticalROI", "ELLIPSE", [100, 60, 100, 100, 70, 80, 130, 80], finding="cyst with a long name"
            ),
            ohif_group(image, "EllipticalROI", "ELLIPSE", rotated),
            ohif_group(image, "CircleROI", "CIRCLE", [50, 60, 50, 75]),
            ohif_group(image, "PlanarFreehandROI", "POLYLINE", freehand),
        ]
    )
    found = read_annotations(report)
    assert found.skipped == []
    assert _boxes(found.prompts) == [
        (30.011, 40.136, 200.678, 229.966),
        (70.0, 60.0, 130.0, 100.0),  # axes: vertical 40 long, horizontal 60 long
        (84.189, 84.189, 115.811, 115.811),  # 45 degrees, semi-axes 20 and 10: half extent sqrt(250)
        (35.0, 45.0, 65.0, 75.0),
        (35.0, 45.0, 110.0, 130.0),
    ]
    first = found.prompts[0]
    assert first.sop_instance_uid == image.SOPInstanceUID and first.frame_number is None
    assert first.annotation_sop_instance_uid == report.SOPInstanceUID
    assert first.tracking_uid.startswith("1.2.826.0.1.3680043.8.498.")
    assert first.referenced_sop_class_uid == image.SOPClassUID
    assert [p.label for p in found.prompts] == ["lesion A", "cyst with a long name", "", "", ""]
    assert [p.graphic_type for p in found.prompts] == ["POLYLINE", "ELLIPSE", "ELLIPSE", "CIRCLE", "POLYLINE"]


def test_frames_of_a_multiframe_image_and_other_sr_classes() -> None:
    cine, _ = ultrasound_cine(frames=3)
    for sop_class_uid in (ENHANCED_SR, COMPREHENSIVE_SR, "1.2.840.10008.5.1.4.1.1.88.34"):
        report = ohif_report(
            [
                ohif_group(cine, "RectangleROI", "POLYLINE", [10, 10, 50, 10, 50, 40, 10, 40, 10, 10], frames=[2]),
                ohif_group(cine, "CircleROI", "CIRCLE", [80, 60, 90, 60]),  # no frame: all frames
            ],
            sop_class_uid=sop_class_uid,
        )
        found = read_annotations(report)
        assert [(p.frame_number, p.box) for p in found.prompts] == [(2, (10, 10, 50, 40)), (None, (70, 50, 90, 70))]
    geometry = {cine.SOPInstanceUID: image_geometry(cine)}
    fitted = fit(found.prompts, geometry)
    assert [(p.frame_number, p.box) for p in fitted.prompts] == [
        (2, (10, 10, 50, 40)),
        (1, (70, 50, 90, 70)),
        (2, (70, 50, 90, 70)),
        (3, (70, 50, 90, 70)),
    ]


def test_hostile_reports_skip_with_reasons_and_the_rest_carries_on() -> None:
    image, _ = ultrasound_image(rows=240, columns=320)
    report = ohif_report(
        [
            ohif_group(image, "RectangleROI", "POLYLINE", [5, 5, 5, 5, 5, 5, 5, 5, 5, 5]),  # zero area
            ohif_group(image, "Length", "POLYLINE", [10, 10, 80, 90]),  # a line
            ohif_group(image, "RectangleROI", "POLYLINE", [np.nan, 1, 20, 1, 20, 30, np.nan, 30, np.nan, 1]),
            ohif_group(image, "RectangleROI", "POLYLINE", [1, 2, 3]),  # odd number of values
            ohif_group(None, "RectangleROI", "POLYLINE", [10, 10, 50, 10, 50, 40, 10, 40, 10, 10]),  # no image
            ohif_group(image, "RectangleROI", "POLYLINE", [10, 10, 50, 10, 50, 40, 10, 40, 10, 10], frames=[0]),
            ohif_group(image, "ArrowAnnotate", "POINT", [10, 10]),
            ohif_group(image, "EllipticalROI", "ELLIPSE", [0, 0, 10, 10, 5, 5]),  # 3 points
            ohif_group(image, "RectangleROI", "POLYLINE", [100, 100, 140, 100, 140, 150, 100, 150, 100, 100]),  # good
        ]
    )
    found = read_annotations(report)
    assert _boxes(found.prompts) == [(100.0, 100.0, 140.0, 150.0)]
    reasons = {skip.where: skip.reason for skip in found.skipped}
    assert len(reasons) == 8
    assert "no area" in reasons["measurement group 1"]
    assert "no area" in reasons["measurement group 2"]
    assert "not finite" in reasons["measurement group 3"]
    assert "3 values" in reasons["measurement group 4"]
    assert "names no image" in reasons["measurement group 5"]
    assert "frames count from 1" in reasons["measurement group 6"]
    assert "marks points" in reasons["measurement group 7"]
    assert "4 points" in reasons["measurement group 8"]

    not_a_report = read_annotations(ohif_report([], root=code("18748-4", "LN", "Diagnostic imaging report")))
    assert not not_a_report.prompts and "not a measurement report" in not_a_report.skipped[0].reason
    empty = read_annotations(ohif_report([]))
    assert "no measurement group" in empty.skipped[0].reason
    assert "holds no annotations" in read_annotations(image).skipped[0].reason


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)


def test_unreadable_content_skips_its_group_only() -> None:
    """Values pydicom cannot convert, as a hostile or broken writer leaves them, and absurd nesting."""
    image, _ = ultrasound_image(rows=240, columns=320)
    rectangle = [10, 10, 50, 10, 50, 40, 10, 40, 10, 10]
    report = ohif_report([ohif_group(image, "RectangleROI", "POLYLINE", rectangle) for _ in range(4)])
    groups = report.ContentSequence[3].ContentSequence

    def scoord(index: int) -> Dataset:
        region: Dataset = groups[index].ContentSequence[2].ContentSequence[0]
        return region

    scoord(0).ContentSequence[0].ReferencedSOPSequence[0][0x00081160] = _raw(0x00081160, "IS", b"abc ")
    scoord(1)[0x00700022] = _raw(0x00700022, "FL", bytes(range(7)))  # not a whole number of floats
    scoord(2)[0x00700023] = _raw(0x00700023, "CS", b"\xff\xfe\x00\x01")
    found = read_annotations(report)
    assert _boxes(found.prompts) == [(10.0, 10.0, 50.0, 40.0)]
    assert [skip.reason for skip in found.skipped] == [
        "its referenced frame number is not a number",
        "content cannot be read (BytesLengthException)",
        "graphic type (unreadable) is not a region the node segments",
    ]

    nested = ohif_group(image, "RectangleROI", "POLYLINE", rectangle)
    for _ in range(40):
        nested = content_item("CONTAINS", "CONTAINER", code("111028", "DCM", "Image Library"), ContentSequence=[nested])
    deep = read_annotations(ohif_report([nested]))
    assert not deep.prompts and "no measurement group" in deep.skipped[0].reason


def test_fitting_clips_skips_and_sets_aside_missing_images() -> None:
    image, _ = ultrasound_image(rows=240, columns=320)
    other, _ = ultrasound_image(rows=240, columns=320, seed=9)
    report = ohif_report(
        [
            ohif_group(image, "RectangleROI", "POLYLINE", [-20, -10, 40, -10, 40, 30, -20, 30, -20, -10]),  # partly out
            ohif_group(image, "RectangleROI", "POLYLINE", [400, 10, 450, 10, 450, 40, 400, 40, 400, 10]),  # outside
            ohif_group(image, "RectangleROI", "POLYLINE", [10, 10, 50, 10, 50, 40, 10, 40, 10, 10], frames=[2]),
            ohif_group(image, "RectangleROI", "POLYLINE", [319.5, 10, 330, 10, 330, 40, 319.5, 40, 319.5, 10]),
            ohif_group(other, "RectangleROI", "POLYLINE", [10, 10, 50, 10, 50, 40, 10, 40, 10, 10]),  # not here
        ]
    )
    found = read_annotations(report)
    assert len(found.prompts) == 5
    fitted = fit(found.prompts, {image.SOPInstanceUID: image_geometry(image)})
    assert [(p.frame_number, p.box) for p in fitted.prompts] == [(1, (0.0, 0.0, 40.0, 30.0))]
    assert [p.sop_instance_uid for p in fitted.missing] == [other.SOPInstanceUID]
    reasons = [skip.reason for skip in fitted.skipped]
    assert len(reasons) == 3
    assert "outside the 320 x 240 image" in reasons[0]
    assert "frame 2 of an image with 1" in reasons[1]
    assert "narrower or lower than a pixel" in reasons[2]


# -- highdicom's TID 1410 / 1411 -----------------------------------------------------------------------------


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float64)


def _highdicom_report(images: list[Dataset], groups: list[object]) -> Dataset:
    report = hd.sr.Comprehensive3DSR(
        evidence=images,
        content=hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_person_context=hd.sr.ObserverContext(
                    observer_type=codes.DCM.Person,
                    observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^A"),
                )
            ),
            procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
            imaging_measurements=groups,
        ),
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
    )
    buffer = io.BytesIO()
    report.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _source(image: Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID)


def test_highdicom_tid1410_and_tid1411_groups() -> None:
    slices, _ = ct_series(slices=3, rows=64, columns=64)
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="nodule 1"),
        referenced_region=hd.sr.ImageRegion("POLYLINE", _rectangle(12, 14, 30, 40), _source(slices[1])),
        finding_type=codes.SCT.Nodule,
    )
    no_finding = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="left kidney"),
        referenced_region=hd.sr.ImageRegion("CIRCLE", np.array([[20.0, 20.0], [20.0, 28.0]]), _source(slices[0])),
    )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="mass"),
        referenced_regions=[
            hd.sr.ImageRegion("POLYLINE", _rectangle(5, 6, 20, 22), _source(slices[0])),
            hd.sr.ImageRegion("POLYLINE", _rectangle(6, 7, 21, 23), _source(slices[1])),
        ],
    )
    found = read_annotations(_highdicom_report(slices, [planar, no_finding, volumetric]))
    assert found.skipped == []
    assert [(p.sop_instance_uid, p.box, p.label) for p in found.prompts] == [
        (slices[1].SOPInstanceUID, (12.0, 14.0, 30.0, 40.0), "Nodule"),
        (slices[0].SOPInstanceUID, (12.0, 12.0, 28.0, 28.0), "left kidney"),
        (slices[0].SOPInstanceUID, (5.0, 6.0, 20.0, 22.0), "mass"),
        (slices[1].SOPInstanceUID, (6.0, 7.0, 21.0, 23.0), "mass"),
    ]
    assert found.prompts[2].tracking_uid == found.prompts[3].tracking_uid != found.prompts[0].tracking_uid


def test_scoord3d_regions_are_placed_on_their_slice() -> None:
    slices, _ = ct_series(slices=3, rows=64, columns=64)
    target = slices[2]
    origin = np.array([float(v) for v in target.ImagePositionPatient])
    spacing = float(target.PixelSpacing[0])

    def patient(x: float, y: float) -> list[float]:  # image coordinates -> mm (axial, pixel centres at +0.5)
        return [origin[0] + (x - 0.5) * spacing, origin[1] + (y - 0.5) * spacing, origin[2]]

    corners = np.array([patient(10, 12), patient(30, 12), patient(30, 40), patient(10, 40), patient(10, 12)])
    region = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 3D"),
        referenced_region=hd.sr.ImageRegion3D("POLYGON", corners, target.FrameOfReferenceUID),
    )
    off_plane = corners + np.array([0.0, 0.0, 1.3])  # more than half the 2.5 mm slice thickness away
    away = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="between slices"),
        referenced_region=hd.sr.ImageRegion3D("POLYGON", off_plane, target.FrameOfReferenceUID),
    )
    found = read_annotations(_highdicom_report(slices, [region, away]))
    assert not found.prompts and len(found.volume_regions) == 2
    geometries = [image_geometry(ds) for ds in slices]
    placed = locate(found.volume_regions[0], geometries)
    assert placed.sop_instance_uid == target.SOPInstanceUID and placed.frame_number == 1
    assert placed.label == "lesion 3D"
    np.testing.assert_allclose(placed.box, (10, 12, 30, 40), atol=1e-6)
    with pytest.raises(Exception, match="plane of no image"):
        locate(found.volume_regions[1], geometries)


# -- presentation states -------------------------------------------------------------------------------------


def presentation_state(
    image: Dataset, annotations: list[hd.pr.GraphicAnnotation], layer: hd.pr.GraphicLayer
) -> Dataset:
    """A GSPS of ``annotations`` on ``image``, in its study, written and read back as a PACS stores it."""
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=hd.UID(),
        series_number=5,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        content_label="DRAWN",
        graphic_layers=[layer],
        graphic_annotations=annotations,
    )
    buffer = io.BytesIO()
    state.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_presentation_state_graphics() -> None:
    image, _ = ultrasound_image(rows=240, columns=320)
    layer = hd.pr.GraphicLayer(layer_name="ANNOTATIONS", order=1)
    tracking_uid = hd.UID()
    objects = [
        hd.pr.GraphicObject(
            "POLYLINE", _rectangle(40, 50, 120, 110), "PIXEL", tracking_id="r1", tracking_uid=tracking_uid
        ),
        hd.pr.GraphicObject("ELLIPSE", np.array([[150.0, 80], [210, 80], [180, 60], [180, 100]]), "PIXEL"),
        hd.pr.GraphicObject("CIRCLE", np.array([[0.5, 0.5], [0.5, 0.6]]), "DISPLAY"),  # 24 rows of radius
        hd.pr.GraphicObject("INTERPOLATED", np.array([[10.0, 200], [40, 190], [60, 230], [20, 235]]), "PIXEL"),
        hd.pr.GraphicObject("POINT", np.array([[5.0, 5.0]]), "PIXEL"),
    ]
    text = hd.pr.TextObject("suspicious", "PIXEL", bounding_box=(40, 30, 120, 45))
    annotation = hd.pr.GraphicAnnotation([image], layer, graphic_objects=objects, text_objects=[text])
    state = presentation_state(image, [annotation], layer)
    found = read_annotations(state)
    assert _boxes(found.prompts) == [
        (40.0, 50.0, 120.0, 110.0),
        (150.0, 60.0, 210.0, 100.0),
        (136.0, 96.0, 184.0, 144.0),  # display centre (0.5, 0.5) = (160, 120); 0.1 of 240 rows: radius 24
        (10.0, 190.0, 60.0, 235.0),
    ]
    assert {p.label for p in found.prompts} == {"suspicious"}
    assert found.prompts[0].tracking_uid == tracking_uid
    assert all(p.sop_instance_uid == image.SOPInstanceUID and p.referenced_series_instance_uid for p in found.prompts)
    assert [s.reason for s in found.skipped] == ["a POINT marks points, not a region"]

    # A rotated display: DISPLAY units are not mapped, PIXEL units still are.
    state.ImageRotation = 90
    rotated = read_annotations(state)
    assert len(rotated.prompts) == 4 - 1
    assert any("rotated or flipped" in s.reason for s in rotated.skipped)

    # An annotation item without its own image references applies to every image of the state.
    del state.GraphicAnnotationSequence[0].ReferencedImageSequence
    assert len(read_annotations(state).prompts) == 3
