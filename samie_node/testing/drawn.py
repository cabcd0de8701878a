"""Annotation objects as viewers write them, for tests, the benchmark and the demo.

:func:`ohif_report` and :func:`ohif_group` build, with pydicom alone, the structure OHIF 3.13.2's
"Create SR" stores (seen in a real run: Measurement Group > NUM Area > INFERRED FROM SCOORD > SELECTED
FROM IMAGE, Implicit VR, a Finding code value longer than SH allows).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    with pydicom.config.disable_value_validation():  # OHIF's code values break SH's 16 characters
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def content_item(relationship: str, value_type: str, concept: Dataset | None, **attributes: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    if concept is not None:
        item.ConceptNameCodeSequence = [concept]
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def image_item(image: Dataset, frames: Sequence[int] = ()) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    if frames:
        reference.ReferencedFrameNumber = list(frames) if len(frames) > 1 else frames[0]
    return content_item("SELECTED FROM", "IMAGE", None, ReferencedSOPSequence=[reference])


def ohif_group(
    image: Dataset | None,
    tool: str,
    graphic_type: str,
    points: Sequence[float],
    *,
    frames: Sequence[int] = (),
    finding: str = "",
    comment: str = "",
) -> Dataset:
    """One measurement group as OHIF 3.13's "Create SR" writes it (dcmjs TID 1500 / TID 300)."""
    scoord = content_item("INFERRED FROM", "SCOORD", None, GraphicType=graphic_type, GraphicData=list(points))
    if image is not None:
        scoord.ContentSequence = [image_item(image, frames)]
    area = content_item("CONTAINS", "NUM", code("42798000", "SCT", "Area"))
    value = Dataset()
    value.MeasurementUnitsCodeSequence = [code("mm2", "UCUM", "mm2")]
    value.NumericValue = "1234.5"
    area.MeasuredValueSequence = [value]
    area.ContentSequence = [scoord]
    children = [
        content_item(
            "HAS OBS CONTEXT",
            "TEXT",
            code("112039", "DCM", "Tracking Identifier"),
            TextValue=f"Cornerstone3DTools@^0.1.0:{tool}",
        ),
        content_item(
            "HAS OBS CONTEXT", "UIDREF", code("112040", "DCM", "Tracking Unique Identifier"), UID=generate_uid()
        ),
    ]
    if finding:  # dcmjs: the label as a free-text Finding, its code value longer than SH allows
        children.append(
            content_item(
                "CONTAINS",
                "CODE",
                code("121071", "DCM", "Finding"),
                ConceptCodeSequence=[code("CORNERSTONEFREETEXT", "CORNERSTONEJS", finding)],
            )
        )
    children.append(area)
    children.append(content_item("CONTAINS", "NUM", code("373098007", "SCT", "Mean")))
    if comment:  # OHIF 3.13: the label typed in the measurement panel
        children.append(content_item("CONTAINS", "TEXT", code("121106", "DCM", "Comment"), TextValue=comment))
    return content_item(
        "CONTAINS",
        "CONTAINER",
        code("125007", "DCM", "Measurement Group"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=children,
    )


def ohif_report(groups: list[Dataset], *, sop_class_uid: str = ENHANCED_SR, root: Dataset | None = None) -> Dataset:
    """An OHIF SR, written as OHIF writes it (Implicit VR Little Endian) and read back."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "SR"
    ds.Manufacturer = "Unspecified"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [root or code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContinuityOfContent = "SEPARATE"
    language = content_item(
        "HAS CONCEPT MOD",
        "CODE",
        code("121049", "DCM", "Language of Content Item and Descendants"),
        ConceptCodeSequence=[code("en", "RFC5646", "English")],
    )
    observer = content_item(
        "HAS OBS CONTEXT", "PNAME", code("121008", "DCM", "Person Observer Name"), PersonName="unknown^unknown"
    )
    library = content_item(
        "CONTAINS", "CONTAINER", code("111028", "DCM", "Image Library"), ContinuityOfContent="SEPARATE"
    )
    measurements = content_item(
        "CONTAINS",
        "CONTAINER",
        code("126010", "DCM", "Imaging Measurements"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=groups,
    )
    ds.ContentSequence = [language, observer, library, measurements]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)


def rectangle_points(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle as OHIF's RectangleROI stores it: a closed POLYLINE of 5 (column, row) points."""
    return [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]


def rectangle_report(
    image: Dataset, boxes: Sequence[tuple[float, float, float, float]], labels: Sequence[str] = ()
) -> Dataset:
    """An OHIF "Create Report" SR with one RectangleROI per box on ``image``, in ``image``'s study, as a
    PACS stores it (patient and study attributes copied, a series of its own)."""
    groups = [
        ohif_group(image, "RectangleROI", "POLYLINE", rectangle_points(*box), comment=label)
        for box, label in zip(boxes, [*labels, *[""] * len(boxes)], strict=False)
    ]
    report = ohif_report(groups)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate"):
        if keyword in image:
            setattr(report, keyword, image.get(keyword))
    for keyword in ("StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(report, keyword, image.get(keyword, ""))
    report.SeriesInstanceUID = generate_uid()
    report.SeriesNumber = 4700
    report.InstanceNumber = 1
    report.CompletionFlag, report.VerificationFlag = "PARTIAL", "UNVERIFIED"
    report.ContentDate, report.ContentTime = "20260101", "120000"
    return report
