"""The findings as a TID 1500 measurement report (Comprehensive 3D SR) with highdicom.

The report references the source images (image library and evidence) and the SEG objects, and holds:

- a classification group (TID 1501): the predicted class as a coded qualitative evaluation and the
  probability of every class as a numeric measurement; or, with no classifier configured, a coded
  statement that no classification was made;
- one region group per SEG segment (TID 1411) that references the
  segment and measures its area (mm2 where pixel spacing is known, pixels otherwise), the number of
  connected regions and the number of images with a region; an empty result says so in a coded finding;
- for each segment with a region, an outline group (TID 1410) with the same tracking identifier and
  tracking UID (the same finding): the outline of the largest region on the image where the segment is
  largest, as a SCOORD polyline on that source image.

The outline group is for viewers. OHIF (3.13) shows a TID 1500 report only through measurements that
have image coordinates: it merges groups by Tracking Unique Identifier, so the region finding becomes
one measurement with the outline drawn on its key image and the region group's numbers as its labels.
Region groups come first so that the report opens on that key image; the classification group (TID
1501) has no image coordinates, which OHIF cannot display (see the README's viewer section).

Each group names the algorithm, its version and the hashes of its weights and classifier checkpoint.
Codes and wording come from ``dicom_templates/report.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.sr.codedict import codes

from samie_node.encode.seg import AlgorithmInfo
from samie_node.encode.templates import Templates
from samie_node.errors import EncodeError
from samie_node.uids import derive_uid


@dataclass(frozen=True)
class ClassLabelCode:
    """A class the classifier can predict, with the code the report writes for it."""

    name: str
    code_value: str
    coding_scheme_designator: str
    code_meaning: str


@dataclass(frozen=True)
class Classification:
    """The study-level classification: class probabilities averaged over the classified images."""

    labels: tuple[ClassLabelCode, ...]
    probabilities: np.ndarray
    images: int

    @property
    def predicted(self) -> ClassLabelCode:
        """The most probable class."""
        return self.labels[int(np.argmax(self.probabilities))]


@dataclass(frozen=True)
class SegmentSummary:
    """Measurements of one segment of one SEG."""

    segmentation: Dataset
    segment_number: int
    area: float
    area_in_mm2: bool
    regions: int
    images_with_region: int
    frames: int


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    parameters = [f"weights_sha256={algorithm.weights_sha256}"]
    if algorithm.classifier_sha256:
        parameters.append(f"classifier_sha256={algorithm.classifier_sha256}")
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64], version=algorithm.version[:64], parameters=parameters
    )


def _classification_group(
    templates: Templates,
    algorithm: AlgorithmInfo,
    classification: Classification | None,
    study_instance_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    template = templates.report.classification
    measurements = []
    if classification is None:
        value = template.no_classifier.concept()
    else:
        value = hd.sr.CodedConcept(
            value=classification.predicted.code_value,
            scheme_designator=classification.predicted.coding_scheme_designator,
            meaning=classification.predicted.code_meaning,
        )
        for label, probability in zip(classification.labels, classification.probabilities, strict=True):
            measurements.append(
                hd.sr.Measurement(
                    name=template.probability_name.concept(
                        code_value=label.code_value, code_meaning=label.code_meaning
                    ),
                    value=round(float(probability), 6),
                    unit=templates.report.probability_unit.concept(),
                    algorithm_id=_algorithm_id(algorithm),
                )
            )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(study_instance_uid, "classification", algorithm.model_version),
            identifier=template.tracking_identifier,
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm),
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=template.evaluation_name.concept(), value=value)],
    )


def _region_group(
    templates: Templates, algorithm: AlgorithmInfo, summary: SegmentSummary
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    template = templates.report.regions
    seg = summary.segmentation
    measurements = [
        hd.sr.Measurement(
            name=template.area.concept(),
            value=round(summary.area, 3),
            unit=(template.area_unit_mm2 if summary.area_in_mm2 else template.area_unit_pixels).concept(),
            algorithm_id=_algorithm_id(algorithm),
        ),
        hd.sr.Measurement(
            name=template.count.concept(),
            value=summary.regions,
            unit=template.count_unit.concept(),
            algorithm_id=_algorithm_id(algorithm),
        ),
        hd.sr.Measurement(
            name=template.images_with_region.concept(),
            value=summary.images_with_region,
            unit=template.images_unit.concept(),
            algorithm_id=_algorithm_id(algorithm),
        ),
    ]
    evaluations = None
    if summary.regions == 0:
        evaluations = [
            hd.sr.QualitativeEvaluation(
                name=templates.report.classification.evaluation_name.concept(), value=template.empty_result.concept()
            )
        ]
    tracking = _region_tracking(template.tracking_identifier, summary)
    common: dict[str, Any] = {
        "tracking_identifier": tracking,
        "finding_type": template.finding_type.concept(),
        "algorithm_id": _algorithm_id(algorithm),
        "measurements": measurements,
        "qualitative_evaluations": evaluations,
    }
    # TID 1411 with a segment reference (no frame number: PS3.3 forbids Referenced Segment Number beside
    # Referenced Frame Number, which is what a TID 1410 segmentation-frame reference writes).
    referenced_series = seg.ReferencedSeriesSequence[0]
    if summary.frames == 1:
        instance = referenced_series.ReferencedInstanceSequence[0]
        source_images = [
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=str(instance.ReferencedSOPClassUID),
                referenced_sop_instance_uid=str(instance.ReferencedSOPInstanceUID),
            )
        ]
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=summary.segment_number,
            source_images=source_images,
        )
    else:
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=summary.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(referenced_series.SeriesInstanceUID)),
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=referenced_segment, **common)


@dataclass(frozen=True)
class RegionOutline:
    """The outline of one region on one source frame, in SCOORD image coordinates.

    ``points`` is a closed polyline of (column, row) pairs where (0, 0) is the top left corner of the
    top left pixel (PS3.3 C.18.6.1.1), so a pixel's centre is at +0.5.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    points: np.ndarray


def region_outline(segmentation: Dataset, segment_number: int) -> RegionOutline | None:
    """The outline of the largest region on the source frame where ``segment_number`` is largest.

    Reads the SEG's own frames (one at a time) and their Derivation Image references, so it describes
    exactly what the SEG holds. Returns None when the segment is empty.
    """
    best: tuple[int, int, Dataset] | None = None  # (area, SEG frame index, source image reference)
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    for index, group in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        identification = group.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        if not identification or int(identification[0].ReferencedSegmentNumber) != segment_number:
            continue
        derivation = group.get("DerivationImageSequence")
        if not derivation or not derivation[0].get("SourceImageSequence"):
            continue
        area = int(np.count_nonzero(pixel_array(segmentation, index=index)))
        if area and (best is None or area > best[0]):
            best = (area, index, derivation[0].SourceImageSequence[0])
    if best is None:
        return None
    _, index, source = best
    mask = (pixel_array(segmentation, index=index) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))[:, 0, :].astype(float)
    if len(contour) < 3:  # a one-pixel or one-line region: its bounding box, on the pixel edges
        x, y, width, height = cv2.boundingRect(contour.astype(np.int32))
        points = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]], dtype=float)
    else:
        points = contour + 0.5
    points = np.vstack([points, points[:1]])  # closed polyline: the last point repeats the first
    frame = source.get("ReferencedFrameNumber")
    return RegionOutline(
        sop_class_uid=str(source.ReferencedSOPClassUID),
        sop_instance_uid=str(source.ReferencedSOPInstanceUID),
        frame_number=int(frame) if frame is not None else None,
        points=points,
    )


def _outline_group(
    templates: Templates, algorithm: AlgorithmInfo, summary: SegmentSummary, outline: RegionOutline
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    template = templates.report.regions
    source_image = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=outline.sop_class_uid,
        referenced_sop_instance_uid=outline.sop_instance_uid,
        referenced_frame_numbers=[outline.frame_number] if outline.frame_number is not None else None,
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_region_tracking(template.tracking_identifier, summary),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline.points,
            source_image=source_image,
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm),
    )


def _region_tracking(identifier: str, summary: SegmentSummary) -> hd.sr.TrackingIdentifier:
    """One finding per SEG segment: its region group and its outline group share this identity."""
    return hd.sr.TrackingIdentifier(
        uid=derive_uid(str(summary.segmentation.SOPInstanceUID), "segment", str(summary.segment_number)),
        identifier=f"{identifier} {summary.segment_number}",
    )


def build_report(
    *,
    sources: Sequence[Dataset],
    segments: Sequence[SegmentSummary],
    other_evidence: Sequence[Dataset],
    classification: Classification | None,
    templates: Templates,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    manufacturer: str,
) -> hd.sr.Comprehensive3DSR:
    """Build the study's measurement report.

    Parameters
    ----------
    sources
        Headers of the images the engine looked at (the image library and evidence).
    segments
        One summary per SEG segment.
    other_evidence
        Further objects the node wrote for this study (secondary capture overlays).

    Raises
    ------
    EncodeError
        If highdicom refuses the report.
    """
    if not sources:
        raise EncodeError("a report needs at least one source image")
    study_instance_uid = str(sources[0].StudyInstanceUID)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("device", algorithm.model_version),
        name=algorithm.name[:64],
        manufacturer_name=manufacturer[:64],
        model_name=algorithm.version[:64],
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    try:
        groups: list[object] = []
        for summary in segments:
            groups.append(_region_group(templates, algorithm, summary))
            outline = region_outline(summary.segmentation, summary.segment_number) if summary.regions else None
            if outline is not None:
                groups.append(_outline_group(templates, algorithm, summary, outline))
        groups.append(_classification_group(templates, algorithm, classification, study_instance_uid))
        report = hd.sr.MeasurementReport(
            observation_context=observation_context,
            procedure_reported=templates.report.procedure_reported.concept(),
            imaging_measurements=groups,  # type: ignore[arg-type]
            title=templates.report.title.concept(),
            referenced_images=list(sources),
        )
        evidence = [*sources, *(s.segmentation for s in segments), *other_evidence]
        unique = list({str(ds.SOPInstanceUID): ds for ds in evidence}.values())
        sr = hd.sr.Comprehensive3DSR(
            evidence=unique,
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=manufacturer[:64],
            is_complete=True,
            is_final=False,
            is_verified=False,
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise EncodeError(f"highdicom refused the SR: {exc}") from exc
    sr.SeriesDescription = templates.report.series_description[:64]
    return sr
