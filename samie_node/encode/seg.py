"""DICOM Segmentation objects (binary SEG) with highdicom, one per source series or multi-frame image.

Each SEG references every source image and frame it covers, carries one segment per region (labelled,
coded and coloured from ``dicom_templates/segments.json``: SNOMED/DCM category and type, recommended
display colour, algorithm identification with name, version and weights hash) and keeps empty frames unless configured
otherwise, so that viewers can align every frame and an empty result stays visible as such.

What highdicom cannot express is handled deliberately: a multi-frame source without a Frame of
Reference (cine ultrasound, for example) cannot be referenced by a SEG. :func:`plan_units` marks such a
source ``seg_possible=False``; the pipeline then writes burned-in Secondary Capture overlays for it
(:mod:`samie_node.encode.sc`) and says so in the log and the SR.

A SEG on a single-frame source without a Frame of Reference (ultrasound, photographs, secondary
captures) gets the Plane Orientation (Patient) and Pixel Measures functional groups that highdicom
leaves out there (PS3.3 allows them when there is no Frame of Reference; dciodvfy stays clean). The
OHIF viewer (3.13, cornerstone3D's SEG adapter) reads both unconditionally and cannot show the SEG
without them: see :func:`add_viewer_geometry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from samie_node.encode.templates import Templates
from samie_node.errors import EncodeError
from samie_node.uids import derive_uid


@dataclass(frozen=True)
class AlgorithmInfo:
    """What made the masks; recorded in every SEG segment and in the SR."""

    name: str
    version: str
    weights_sha256: str
    classifier_sha256: str = ""
    #: The classifier's own name and version (from its checkpoint), for the statements it makes.
    classifier_name: str = ""
    classifier_version: str = ""

    @property
    def model_version(self) -> str:
        """A short identity of the models, used in output UIDs (same models, same UIDs)."""
        return f"{self.name}:{self.version}:{self.weights_sha256[:16]}:{self.classifier_sha256[:16] or 'none'}"


@dataclass(frozen=True)
class SegUnit:
    """Source images that one SEG covers: a series of single-frame images of one size, or one multi-frame
    image."""

    key: str
    sources: tuple[Dataset, ...]
    seg_possible: bool

    @property
    def frame_keys(self) -> list[tuple[str, int]]:
        """(SOP Instance UID, 1-based frame number) of every source frame, in SEG frame order."""
        keys: list[tuple[str, int]] = []
        for source in self.sources:
            frames = int(source.get("NumberOfFrames", 1) or 1)
            keys.extend((str(source.SOPInstanceUID), n) for n in range(1, frames + 1))
        return keys


def plan_units(sources: Sequence[Dataset]) -> list[SegUnit]:
    """Group source image headers into the units a SEG can reference."""
    singles: dict[tuple[str, int, int], list[Dataset]] = {}
    units: list[SegUnit] = []
    for source in sources:
        frames = int(source.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            has_for = bool(source.get("FrameOfReferenceUID"))
            units.append(SegUnit(str(source.SOPInstanceUID), (source,), seg_possible=has_for))
            continue
        key = (str(source.SeriesInstanceUID), int(source.Rows), int(source.Columns))
        singles.setdefault(key, []).append(source)
    for (series, rows, columns), group in singles.items():
        group.sort(key=lambda ds: (int(ds.get("InstanceNumber") or 0), str(ds.SOPInstanceUID)))
        # Without a frame of reference highdicom takes one single-frame image per SEG.
        if all(ds.get("FrameOfReferenceUID") for ds in group):
            units.append(SegUnit(f"{series}:{rows}x{columns}", tuple(group), seg_possible=True))
        else:
            units.extend(SegUnit(str(ds.SOPInstanceUID), (ds,), seg_possible=True) for ds in group)
    return units


@dataclass(frozen=True)
class SegmentSpec:
    """One segment to write: its number, label and display colour (sRGB); ``semiautomatic`` when a person
    prompted it (a drawn box), which the SEG says as its Segment Algorithm Type."""

    number: int
    label: str
    rgb: tuple[int, int, int]
    semiautomatic: bool = False


def _segment_descriptions(
    templates: Templates, algorithm: AlgorithmInfo, sop_instance_uid: str, segments: Sequence[SegmentSpec]
) -> list[hd.seg.SegmentDescription]:
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        version=algorithm.version[:64],
        family=templates.segments.algorithm_family.concept(),
        parameters={"weights_sha256": algorithm.weights_sha256},
    )
    region = templates.segments.region
    return [
        hd.seg.SegmentDescription(
            segment_number=segment.number,
            segment_label=segment.label[:64],
            segmented_property_category=region.category.concept(),
            segmented_property_type=region.type.concept(),
            algorithm_type=(
                hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
                if segment.semiautomatic
                else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            ),
            algorithm_identification=identification,
            tracking_id=segment.label[:64],
            tracking_uid=derive_uid(sop_instance_uid, "segment", str(segment.number)),
            display_color=hd.color.CIELabColor.from_rgb(*segment.rgb),
        )
        for segment in segments
    ]


def build_segmentation(
    unit: SegUnit,
    masks: Mapping[tuple[str, int], np.ndarray],
    segments: Sequence[SegmentSpec],
    *,
    templates: Templates,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    manufacturer: str,
    keep_empty_frames: bool,
    series_description: str | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG for one unit.

    Parameters
    ----------
    masks
        For every (SOP Instance UID, frame number) of the unit, a boolean array (segments, rows, columns),
        one plane per segment of ``segments``, at the source image's resolution.
    segments
        The segments, numbered 1 to n in order.
    series_description
        Instead of the template's (the pipeline adds the study's class to it).

    Raises
    ------
    EncodeError
        If a frame has no mask or highdicom refuses the object.
    """
    if not unit.seg_possible:
        raise EncodeError("a multi-frame source without a Frame of Reference cannot be referenced by a SEG")
    planes = []
    for key in unit.frame_keys:
        mask = masks.get(key)
        if mask is None:
            raise EncodeError(f"no mask for frame {key[1]} of {key[0]}")
        if mask.ndim != 3 or mask.shape[0] != len(segments):
            raise EncodeError(f"mask of shape {mask.shape} does not have {len(segments)} segment planes")
        planes.append(np.moveaxis(mask.astype(bool), 0, -1))
    pixel_array = np.stack(planes)  # (frames, rows, columns, segments)
    # An all-empty result keeps its frames even when empty frames are omitted: empty is reported, not hidden.
    omit_empty = not keep_empty_frames and bool(pixel_array.any())
    try:
        seg = hd.seg.Segmentation(
            source_images=list(unit.sources),
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(templates, algorithm, sop_instance_uid, segments),
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer[:64],
            manufacturer_model_name=algorithm.name[:64],
            software_versions=algorithm.version[:64],
            device_serial_number=algorithm.weights_sha256[:16],
            content_label=templates.segments.content_label,
            content_description=templates.segments.content_description[:64],
            series_description=(series_description or templates.segments.series_description)[:64],
            omit_empty_frames=omit_empty,
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise EncodeError(f"highdicom refused the SEG: {exc}") from exc
    source = unit.sources[0]
    if "FrameOfReferenceUID" not in seg:
        # General Image: Patient Orientation is Type 2C when there is no frame of reference.
        seg.PatientOrientation = source.get("PatientOrientation", "")
        add_viewer_geometry(seg, source)
    else:
        complete_geometry(seg, source)
    return seg


def complete_geometry(seg: Dataset, source: Dataset) -> None:
    """Fill what highdicom leaves out for a source with a Frame of Reference but partial geometry.

    Some sources (nuclear medicine, secondary captures with a frame of reference) carry Pixel Spacing
    but no Slice Thickness, or no Image Orientation (Patient). highdicom then writes a Pixel Measures
    item without Slice Thickness (Type 1C, and highdicom itself cannot read such a SEG back) and no
    orientation. Slice Thickness comes from the source (or its Spacing Between Slices), else is nominal
    and said so; without any orientation, Patient Orientation (Type 2C) is copied from the source.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    nominal = _complete_pixel_measures(shared, source, need_spacing=False)
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    has_orientation = "PlaneOrientationSequence" in shared or any(
        "PlaneOrientationSequence" in item for item in per_frame
    )
    if not has_orientation and "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "")
    _note_nominal(seg, nominal)


#: The in-plane orientation of an image that has none: rows run along the first axis, columns along the
#: second. It relates the SEG's pixel grid to its source's (which is identical), not to the patient.
IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

#: Written as Pixel Spacing (mm) and Slice Thickness (mm) when the source image has none; flagged as
#: nominal in Image Comments.
NOMINAL_PIXEL_SPACING = (1.0, 1.0)
NOMINAL_SLICE_THICKNESS = 1.0


def add_viewer_geometry(seg: Dataset, source: Dataset) -> None:
    """Give a SEG without a Frame of Reference the shared geometry functional groups viewers read.

    OHIF 3.13 reads ``SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]`` in its SEG viewport
    (``_getReferencedDisplaySetMetadata``: "Cannot destructure property 'SpacingBetweenSlices' of
    'PixelMeasures'") and the Plane Orientation's Image Orientation (Patient) in cornerstone3D's SEG
    adapter (``checkOrientation``, ``insertPixelDataPlanar``); without them it shows nothing. PS3.3
    permits both functional groups when the Frame of Reference is absent, so the SEG stays valid.

    The orientation is the identity (the SEG's frames lie on their source images' pixel grid, which
    cornerstone also assumes for a source without orientation). Pixel Spacing and Slice Thickness are
    the source's where it has them, otherwise nominal (1 mm), and Image Comments says which are nominal:
    an empty Pixel Measures item would be valid, but Orthanc's DICOMweb JSON drops empty items (so the
    viewer still would not see one), and highdicom reads a Pixel Measures item only with both
    attributes. The SR's areas come from the source images' own spacing, never from a nominal value.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:
        orientation = Dataset()
        orientation.ImageOrientationPatient = list(IDENTITY_ORIENTATION)
        shared.PlaneOrientationSequence = [orientation]
    _note_nominal(seg, _complete_pixel_measures(shared, source, need_spacing=True))


def _complete_pixel_measures(shared: Dataset, source: Dataset, *, need_spacing: bool) -> list[str]:
    """Complete (or, with ``need_spacing``, create) the shared Pixel Measures item; returns what is nominal.

    highdicom writes Pixel Measures only when the source has Pixel Spacing, and then without Slice
    Thickness when the source has none.
    """
    if not shared.get("PixelMeasuresSequence") and not need_spacing:
        return []
    measures = shared.PixelMeasuresSequence[0] if shared.get("PixelMeasuresSequence") else Dataset()
    nominal = []
    if "PixelSpacing" not in measures:
        spacing = _positive_numbers(source.get("PixelSpacing"), 2)
        if spacing is None:
            spacing = list(NOMINAL_PIXEL_SPACING)
            nominal.append("Pixel Spacing")
        measures.PixelSpacing = spacing
    if "SliceThickness" not in measures:
        thickness = _positive_numbers(source.get("SliceThickness"), 1) or _positive_numbers(
            source.get("SpacingBetweenSlices"), 1
        )
        if thickness is None:
            thickness = [NOMINAL_SLICE_THICKNESS]
            nominal.append("Slice Thickness")
        measures.SliceThickness = thickness[0]
    shared.PixelMeasuresSequence = [measures]
    return nominal


def _note_nominal(seg: Dataset, nominal: list[str]) -> None:
    if nominal:
        seg.ImageComments = (
            f"{' and '.join(nominal)} in the Pixel Measures functional group "
            f"{'are' if len(nominal) > 1 else 'is'} nominal (1 mm): the source image has none."
        )


def _positive_numbers(value: object, count: int) -> list[float] | None:
    """``value`` as ``count`` positive numbers, or None when it is absent or unusable."""
    if value is None or isinstance(value, str | bytes):  # absent, or empty ("")
        return None
    values = list(value) if isinstance(value, Iterable) else [value]
    try:
        numbers = [float(str(v)) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(n > 0 for n in numbers) else None
