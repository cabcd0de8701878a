"""The regions a radiologist drew, read from the study's annotation objects as box prompts.

A viewer stores what was drawn in one of two kinds of object, and the node reads both with pydicom alone
(highdicom's readers do not find OHIF's groups, and a tolerant reader must not depend on a strict one):

TID 1500 measurement reports (Enhanced, Comprehensive, Comprehensive 3D and Extensible SR)
    Every Measurement Group (DCM 125007) under the report is walked, and every planar region inside it
    becomes a prompt: a ``SCOORD`` whether it is a direct child of the group (TID 1410, as highdicom
    writes it; TID 1411 with one region per image) or the child of a measurement (OHIF's "Create SR": the
    first NUM, Area, is INFERRED FROM the SCOORD), with its IMAGE child (SELECTED FROM) naming the SOP
    Instance and frames. ``SCOORD3D`` regions come back as :class:`VolumeRegion` for
    :func:`samie_node.annotation_fit.locate` to map onto an image plane.
Presentation states (grayscale, colour, pseudo-colour)
    Every graphic object of every Graphic Annotation Sequence item, on the images the item (or else the
    whole presentation state) references. PIXEL units are image coordinates; DISPLAY units are fractions
    of the displayed area, mapped back when the display is neither rotated nor flipped.

Geometry becomes a box (x0, y0, x1, y1) in image coordinates, (0, 0) being the top left corner of the top
left pixel, as both SCOORD and PIXEL units define it: a rectangle (POLYLINE of 5 points, OHIF) or any
outline (POLYLINE, POLYGON, INTERPOLATED) gives its bounding box, an ELLIPSE (axis end points) and a CIRCLE
(centre and a point on it) the box of the shape. Points, lines and degenerate shapes (no area, NaN) are
skipped with a reason, as is any group whose content cannot be read; the other regions carry on.

Labels: the group's Finding (OHIF's free text, ``CORNERSTONEFREETEXT``, is read whatever its length),
else its Comment (where OHIF 3 puts the label typed in the measurement panel), else its Tracking Identifier
unless it only names OHIF's drawing tool; for presentation states, the text of the same annotation item,
else the graphic group's label. An empty label leaves the name to the caller ("Region n").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from samie_node.annotation_geometry import box_of_shape, display_to_pixels
from samie_node.errors import AnnotationError

LOG = logging.getLogger("samie_node.annotations")

#: SR storage classes that can hold TID 1500 with spatial coordinates.
MEASUREMENT_REPORT_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    }
)
#: Presentation states with the Graphic Annotation module.
PRESENTATION_STATE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.11.2",  # Color Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.11.3",  # Pseudo-Color Softcopy Presentation State
    }
)

#: Content nested deeper than this is not searched (TID 1500 needs 4 levels; a hostile tree may have thousands).
MAX_CONTENT_DEPTH = 32

_REPORT = "126000"  # Imaging Measurement Report (DCM)
_GROUP = "125007"  # Measurement Group (DCM)
_TRACKING_IDENTIFIER = "112039"
_TRACKING_UID = "112040"
_FINDING = "121071"
_COMMENT = "121106"
_GRAPHIC_TYPE = re.compile(r"^[A-Z0-9_]{1,16}$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9]*Tools@[^:]*:[A-Za-z0-9]+$")  # OHIF: Cornerstone3DTools@^0.1.0:RectangleROI


@dataclass(frozen=True)
class BoxPrompt:
    """One drawn region as a box prompt on one image.

    Attributes
    ----------
    sop_instance_uid
        The annotated image.
    frame_number
        1-based frame; None when the annotation names none (all frames of a multi-frame image, the one
        frame of a single-frame image: :func:`samie_node.annotation_fit.fit` decides).
    box
        x0, y0, x1, y1 in image coordinates ((0, 0) is the top left corner of the top left pixel).
    label
        Finding, comment or tracking identifier; empty when the annotation gives none.
    annotation_sop_instance_uid
        The SR or presentation state the region came from.
    tracking_uid
        The group's (or graphic object's) Tracking Unique Identifier; empty when none.
    graphic_type
        As drawn (POLYLINE, ELLIPSE, CIRCLE, ...).
    referenced_sop_class_uid, referenced_series_instance_uid
        Of the annotated image, where the annotation says (for retrieving it); empty otherwise.
    """

    sop_instance_uid: str
    frame_number: int | None
    box: tuple[float, float, float, float]
    label: str
    annotation_sop_instance_uid: str
    tracking_uid: str
    graphic_type: str
    referenced_sop_class_uid: str = ""
    referenced_series_instance_uid: str = ""


@dataclass(frozen=True)
class VolumeRegion:
    """A region drawn in patient coordinates (SCOORD3D), not yet placed on an image."""

    frame_of_reference_uid: str
    points: np.ndarray = field(compare=False)  # (N, 3) float64, mm
    graphic_type: str
    label: str
    annotation_sop_instance_uid: str
    tracking_uid: str


@dataclass(frozen=True)
class SkippedRegion:
    """A region, group or whole object that gives no prompt, and why (for the log and the SR).

    ``drawn`` is False when nothing drawn was found there (not a measurement report, a group without
    spatial coordinates, a presentation state without graphics): such an object alone asks for no answer.
    """

    annotation_sop_instance_uid: str
    where: str
    reason: str
    drawn: bool = True


@dataclass
class Annotations:
    """What one annotation object holds."""

    annotation_sop_instance_uid: str
    prompts: list[BoxPrompt] = field(default_factory=list)
    volume_regions: list[VolumeRegion] = field(default_factory=list)
    skipped: list[SkippedRegion] = field(default_factory=list)

    @contextmanager
    def reading(self, where: str) -> Iterator[None]:
        """The one catcher around reading one group or graphic object: a failure skips only that one.

        An :class:`AnnotationError` is a reason; anything else is content pydicom could not convert
        (hostile or broken values), logged with its traceback, and the rest of the object carries on.
        """
        try:
            yield
        except AnnotationError as exc:
            self.skip(where, str(exc))
        except Exception as exc:
            LOG.warning(
                "annotation content unreadable sop_instance_uid=%s %s",
                self.annotation_sop_instance_uid,
                where,
                exc_info=True,
            )
            self.skip(where, f"content cannot be read ({type(exc).__name__})")

    def skip(self, where: str, reason: str, *, drawn: bool = True) -> None:
        """Record a region that gives no prompt, and log it (UIDs only)."""
        self.skipped.append(SkippedRegion(self.annotation_sop_instance_uid, where, reason, drawn))
        LOG.warning(
            "annotation region skipped sop_instance_uid=%s %s: %s", self.annotation_sop_instance_uid, where, reason
        )


def is_annotation_object(sop_class_uid: str) -> bool:
    """True for the SR and presentation state classes whose drawings :func:`read_annotations` reads."""
    return sop_class_uid in MEASUREMENT_REPORT_CLASSES or sop_class_uid in PRESENTATION_STATE_CLASSES


def read_annotations(dataset: Dataset) -> Annotations:
    """Read every drawn region of an SR or presentation state as box prompts.

    Never raises for bad content: an object that is not a measurement report or presentation state, a
    group that cannot be read and a degenerate region are each recorded in ``skipped`` with a reason,
    and the rest is read. Values longer than their VR allows (OHIF writes such) are read as they are.
    """
    uid = str(dataset.get("SOPInstanceUID", "") or "")
    result = Annotations(uid)
    sop_class_uid = str(dataset.get("SOPClassUID", "") or "")
    with pydicom_config.disable_value_validation():
        if sop_class_uid in MEASUREMENT_REPORT_CLASSES:
            _read_report(dataset, result)
        elif sop_class_uid in PRESENTATION_STATE_CLASSES:
            _read_presentation_state(dataset, result)
        else:
            result.skip(
                "object", f"SOP class {sop_class_uid or '(none)'} holds no annotations the node reads", drawn=False
            )
    return result


# -- content items ----------------------------------------------------------------------------------------


def _code_value(code: Dataset) -> str:
    for keyword in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        value = code.get(keyword)
        if value:
            return str(value)
    return ""


def _concept(item: Dataset) -> str:
    """The code value of an item's concept name ('' when it has none)."""
    names = item.get("ConceptNameCodeSequence")
    return _code_value(names[0]) if names else ""


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _value_type(item: Dataset) -> str:
    return str(item.get("ValueType", "") or "").upper()


def _is_group(item: Dataset) -> bool:
    return _value_type(item) == "CONTAINER" and _concept(item) == _GROUP


def _groups(item: Dataset, depth: int = 0) -> Iterator[Dataset]:
    """Every Measurement Group below ``item``, in document order (groups are not searched inside)."""
    if depth > MAX_CONTENT_DEPTH:
        return
    for child in _children(item):
        if _is_group(child):
            yield child
        else:
            yield from _groups(child, depth + 1)


def _regions(item: Dataset, depth: int = 0) -> Iterator[Dataset]:
    """Every SCOORD and SCOORD3D below a group, through measurements (INFERRED FROM) and all."""
    if depth > MAX_CONTENT_DEPTH:
        return
    for child in _children(item):
        if _value_type(child) in ("SCOORD", "SCOORD3D"):
            yield child
        elif not _is_group(child):
            yield from _regions(child, depth + 1)


def _text_of(group: Dataset, concept: str) -> str:
    for child in _children(group):
        if _concept(child) != concept:
            continue
        kind = _value_type(child)
        if kind == "TEXT" and child.get("TextValue"):
            return str(child.TextValue).strip()
        if kind == "UIDREF" and child.get("UID"):
            return str(child.UID).strip()
        if kind == "CODE" and child.get("ConceptCodeSequence"):
            code = child.ConceptCodeSequence[0]
            return str(code.get("CodeMeaning", "") or _code_value(code)).strip()
    return ""


def _group_label(group: Dataset) -> str:
    tracking = _text_of(group, _TRACKING_IDENTIFIER)
    if _TOOL_NAME.match(tracking):
        tracking = ""
    return _text_of(group, _FINDING) or _text_of(group, _COMMENT) or tracking


def _values(value: object) -> list[object]:
    """A DICOM value as a list: multi-valued elements as they are, one value as a list of one."""
    if value is None or value == "":
        return []
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def _points(item: Dataset, dimensions: int) -> np.ndarray:
    """GraphicData as (N, dimensions) float64."""
    try:
        values = np.asarray([float(v) for v in _values(item.get("GraphicData"))], np.float64)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise AnnotationError("its GraphicData is not numbers") from exc
    if values.size == 0 or values.size % dimensions:
        raise AnnotationError(f"its GraphicData holds {values.size} values, not {dimensions} per point")
    return values.reshape(-1, dimensions)


def _frames(reference: Dataset) -> list[int | None]:
    """Referenced frame numbers of a reference item; [None] when it names none (all frames)."""
    try:
        numbers = [int(value) for value in _values(reference.get("ReferencedFrameNumber"))]  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise AnnotationError("its referenced frame number is not a number") from exc
    if any(number < 1 for number in numbers):
        raise AnnotationError(f"it references frame {min(numbers)} (frames count from 1)")
    return list(numbers) or [None]


def _graphic_type(item: Dataset) -> str:
    """GraphicType as an upper-case word; a value that is not one (hostile bytes) never reaches a log."""
    value = str(item.get("GraphicType", "") or "").strip().upper()
    return value if _GRAPHIC_TYPE.match(value) else ("(unreadable)" if value else "")


def _image_references(region: Dataset) -> list[Dataset]:
    """The ReferencedSOPSequence items of a region's IMAGE children (SELECTED FROM)."""
    return [
        reference
        for child in _children(region)
        if _value_type(child) == "IMAGE"
        for reference in (child.get("ReferencedSOPSequence") or [])[:1]
        if reference.get("ReferencedSOPInstanceUID")
    ]


@dataclass(frozen=True)
class _Drawn:
    """One drawn region before it is placed on the images and frames it names."""

    box: tuple[float, float, float, float]
    label: str
    tracking_uid: str
    graphic_type: str


def _prompts_on(reference: Dataset, series_instance_uid: str, drawn: _Drawn, annotation_uid: str) -> list[BoxPrompt]:
    """The region as a prompt on each frame a reference item (ReferencedSOPSequence or
    ReferencedImageSequence item) names."""
    return [
        BoxPrompt(
            str(reference.ReferencedSOPInstanceUID),
            frame,
            drawn.box,
            drawn.label,
            annotation_uid,
            drawn.tracking_uid,
            drawn.graphic_type,
            str(reference.get("ReferencedSOPClassUID", "") or ""),
            series_instance_uid,
        )
        for frame in _frames(reference)
    ]


# -- measurement reports ----------------------------------------------------------------------------------


def _evidence_series(dataset: Dataset) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID from the report's evidence sequences."""
    series: dict[str, str] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in dataset.get(keyword) or []:
            for item in study.get("ReferencedSeriesSequence") or []:
                for reference in item.get("ReferencedSOPSequence") or []:
                    series[str(reference.get("ReferencedSOPInstanceUID", ""))] = str(item.get("SeriesInstanceUID", ""))
    return series


def _read_report(dataset: Dataset, result: Annotations) -> None:
    root = _concept(dataset)
    if _value_type(dataset) != "CONTAINER" or root != _REPORT:
        reason = f"not a measurement report (root concept {root or 'missing'}, TID 1500 has {_REPORT})"
        result.skip("object", reason, drawn=False)
        return
    groups = list(_groups(dataset))
    if not groups:
        result.skip("object", "the measurement report holds no measurement group", drawn=False)
        return
    series = _evidence_series(dataset)
    for number, group in enumerate(groups, start=1):
        where = f"measurement group {number}"
        with result.reading(where):
            _read_group(group, where, series, result)


def _read_group(group: Dataset, where: str, series: dict[str, str], result: Annotations) -> None:
    label = _group_label(group)
    tracking_uid = _text_of(group, _TRACKING_UID)
    regions = list(_regions(group))
    if not regions:
        result.skip(where, "it holds no spatial coordinates (no SCOORD or SCOORD3D region)", drawn=False)
        return
    seen: set[BoxPrompt] = set()  # the same region under several measurements counts once
    for index, region in enumerate(regions, start=1):
        with result.reading(f"{where} region {index}" if len(regions) > 1 else where):
            _read_region(region, label, tracking_uid, series, seen, result)


def _read_region(
    region: Dataset, label: str, tracking_uid: str, series: dict[str, str], seen: set[BoxPrompt], result: Annotations
) -> None:
    graphic_type = _graphic_type(region)
    if _value_type(region) == "SCOORD3D":
        result.volume_regions.append(_volume_region(region, graphic_type, label, tracking_uid, result))
        return
    box = box_of_shape(graphic_type, _points(region, 2))
    references = _image_references(region)
    if not references:
        raise AnnotationError("it names no image (no IMAGE item SELECTED FROM)")
    drawn = _Drawn(box, label, tracking_uid, graphic_type)
    for reference in references:
        series_instance_uid = series.get(str(reference.ReferencedSOPInstanceUID), "")
        for prompt in _prompts_on(reference, series_instance_uid, drawn, result.annotation_sop_instance_uid):
            if prompt not in seen:
                seen.add(prompt)
                result.prompts.append(prompt)


def _volume_region(
    region: Dataset, graphic_type: str, label: str, tracking_uid: str, result: Annotations
) -> VolumeRegion:
    frame_of_reference_uid = str(region.get("ReferencedFrameOfReferenceUID", "") or "")
    if not frame_of_reference_uid:
        raise AnnotationError("its SCOORD3D names no frame of reference")
    points = _points(region, 3)
    if not np.isfinite(points).all():
        raise AnnotationError("its coordinates are not finite numbers")
    return VolumeRegion(
        frame_of_reference_uid, points, graphic_type, label, result.annotation_sop_instance_uid, tracking_uid
    )


# -- presentation states ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageReference:
    item: Dataset  # a ReferencedImageSequence item: SOP Class/Instance UID, frames
    series_instance_uid: str


def _presentation_images(dataset: Dataset) -> list[_ImageReference]:
    """Every image the presentation state applies to (ReferencedSeriesSequence)."""
    return [
        _ImageReference(image, str(series.get("SeriesInstanceUID", "") or ""))
        for series in dataset.get("ReferencedSeriesSequence") or []
        for image in series.get("ReferencedImageSequence") or []
        if image.get("ReferencedSOPInstanceUID")
    ]


def _annotation_images(annotation: Dataset, all_images: list[_ImageReference]) -> list[_ImageReference]:
    """The images one Graphic Annotation item applies to: its own references, else the whole state's."""
    own = [item for item in annotation.get("ReferencedImageSequence") or [] if item.get("ReferencedSOPInstanceUID")]
    if not own:
        return all_images
    series = {str(ref.item.ReferencedSOPInstanceUID): ref.series_instance_uid for ref in all_images}
    return [_ImageReference(item, series.get(str(item.ReferencedSOPInstanceUID), "")) for item in own]


def _displayed_area(dataset: Dataset, sop_instance_uid: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in image coordinates of the displayed area the state selects for an image.

    Raises
    ------
    AnnotationError
        If the display is rotated or flipped, or no displayed area applies to the image.
    """
    rotation = str(dataset.get("ImageRotation", "0") or "0").strip()
    if rotation not in ("0", "") or str(dataset.get("ImageHorizontalFlip", "N") or "N").upper() == "Y":
        raise AnnotationError("DISPLAY units on a rotated or flipped display are not mapped")
    for area in dataset.get("DisplayedAreaSelectionSequence") or []:
        targets = {str(item.get("ReferencedSOPInstanceUID", "")) for item in area.get("ReferencedImageSequence") or []}
        if targets and sop_instance_uid not in targets:
            continue
        try:
            left, top = (float(v) for v in _values(area.DisplayedAreaTopLeftHandCorner)[:2])  # type: ignore[arg-type]
            right, bottom = (float(v) for v in _values(area.DisplayedAreaBottomRightHandCorner)[:2])  # type: ignore[arg-type]
        except (AttributeError, TypeError, ValueError) as exc:
            raise AnnotationError("the displayed area's corners cannot be read") from exc
        return (left - 1.0, top - 1.0, right, bottom)  # corners name pixels, counted from 1
    raise AnnotationError("DISPLAY units, but no displayed area applies to the image")


def _annotation_label(annotation: Dataset, graphic: Dataset, group_labels: dict[str, str]) -> str:
    for text in annotation.get("TextObjectSequence") or []:
        if text.get("UnformattedTextValue"):
            return str(text.UnformattedTextValue).strip()
    return group_labels.get(str(graphic.get("GraphicGroupID", "")), "")


def _read_presentation_state(dataset: Dataset, result: Annotations) -> None:
    annotations = list(dataset.get("GraphicAnnotationSequence") or [])
    if not any(annotation.get("GraphicObjectSequence") for annotation in annotations):
        result.skip("object", "the presentation state holds no graphic object", drawn=False)
        return
    all_images = _presentation_images(dataset)
    group_labels = {
        str(group.get("GraphicGroupID", "")): str(group.get("GraphicGroupLabel", "") or "").strip()
        for group in dataset.get("GraphicGroupSequence") or []
    }
    for annotation_number, annotation in enumerate(annotations, start=1):
        images = _annotation_images(annotation, all_images)
        for object_number, graphic in enumerate(annotation.get("GraphicObjectSequence") or [], start=1):
            where = f"graphic annotation {annotation_number} object {object_number}"
            with result.reading(where):
                if not images:
                    raise AnnotationError("it applies to no referenced image")
                label = _annotation_label(annotation, graphic, group_labels)
                _read_graphic(dataset, graphic, images, label, result)


def _read_graphic(
    dataset: Dataset, graphic: Dataset, images: list[_ImageReference], label: str, result: Annotations
) -> None:
    units = str(graphic.get("GraphicAnnotationUnits", "") or "").upper()
    if units not in ("PIXEL", "DISPLAY"):
        raise AnnotationError(f"graphic annotation units {units or '(none)'} are not PIXEL or DISPLAY")
    graphic_type = _graphic_type(graphic)
    points = _points(graphic, 2)
    tracking_uid = str(graphic.get("TrackingUID", "") or "")
    for reference in images:
        sop_instance_uid = str(reference.item.ReferencedSOPInstanceUID)
        pixels = points if units == "PIXEL" else display_to_pixels(points, _displayed_area(dataset, sop_instance_uid))
        drawn = _Drawn(box_of_shape(graphic_type, pixels), label, tracking_uid, graphic_type)
        result.prompts.extend(
            _prompts_on(reference.item, reference.series_instance_uid, drawn, result.annotation_sop_instance_uid)
        )
