"""The findings as a TID 1500 measurement report (Comprehensive 3D SR) with highdicom.

The report references the source images (image library and evidence) and the SEG objects, and holds,
in this order:

- per region (one per SEG segment) a region group (TID 1411) that references the segment and measures,
  with a classifier first, the probability of the most probable class on the region's key image (the
  line OHIF shows first beside the outline), then its area (mm2 where pixel spacing is known, pixels
  otherwise), its mean modality value where that means something (Hounsfield units on CT; grey images
  only) and, in a series, the number of images it shows on; then an outline group (TID 1410) with the
  same tracking identifier and tracking UID (the same finding): the region's outline on the image where
  it is largest, as a SCOORD polyline on that source image;
- per drawn region the node did not use (prompted mode only), a group (TID 1501) that says so, coded
  (Finding: "Drawn region not used"), with a Comment naming the annotation object, where in it the
  region was drawn and why it was not used;
- a totals group (TID 1501): the area of all regions, their number and the images with a region, or the
  coded statement that no region was segmented;
- a classification group (TID 1501): the predicted class as a coded qualitative evaluation, the
  probability of every class as a numeric measurement whose method says how the per-image probabilities
  were combined (their mean);
  or, with no classifier configured, a coded statement that no classification was made.

The outline groups are for viewers. OHIF (3.13) shows a TID 1500 report only through measurements that
have image coordinates: it merges groups by Tracking Unique Identifier, so each region becomes one
measurement drawn on its key image with its region group's numbers beside it. Region groups come first
so that the report opens on the largest region; groups without image coordinates (totals,
classification) come last, which OHIF skips (see the README's viewer section).

Each group names the algorithm, its version and the hashes of its weights and classifier checkpoint; what
the classifier states (the class, its probabilities) names the classifier itself, by its checkpoint's name
and version.
Codes and wording come from ``dicom_templates/report.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
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
class RegionOutline:
    """The outline of a region on one source frame, in SCOORD image coordinates.

    ``points`` is a closed polyline of (column, row) pairs where (0, 0) is the top left corner of the
    top left pixel (PS3.3 C.18.6.1.1), so a pixel's centre is at +0.5.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    points: np.ndarray


@dataclass(frozen=True)
class RegionFinding:
    """One region: the SEG segment that holds it and what the report says of it.

    ``probabilities`` are the classifier's class probabilities for the image the region is largest on
    (the region's key image), None without a classifier.
    """

    segmentation: Dataset
    segment_number: int
    label: str
    area: float
    area_in_mm2: bool
    mean_value: float | None
    value_unit: str
    images: int
    series: bool
    outline: RegionOutline
    probabilities: tuple[float, ...] | None = None


@dataclass(frozen=True)
class UnusedRegion:
    """A region a radiologist drew that gave no prompt: the annotation object, where in it, and why.

    The texts hold UIDs, item numbers and reasons, never the patient's identity.
    """

    annotation_sop_instance_uid: str
    where: str
    reason: str

    @property
    def text(self) -> str:
        """The Comment the report writes (and a reader of any SR viewer sees)."""
        return f"Not used: {self.where} of annotation {self.annotation_sop_instance_uid}: {self.reason}"


@dataclass(frozen=True)
class StudyTotals:
    """All regions of the study together."""

    area: float
    area_in_mm2: bool
    regions: int
    images_with_region: int


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    parameters = [f"weights_sha256={algorithm.weights_sha256}"]
    if algorithm.classifier_sha256:
        parameters.append(f"classifier_sha256={algorithm.classifier_sha256}")
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64], version=algorithm.version[:64], parameters=parameters
    )


def _classifier_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """The classifier's own identity, on the statements it makes (class, probabilities): its name is the
    checkpoint's, so a demonstration model says so where the class is reported."""
    parameters = [
        f"classifier_sha256={algorithm.classifier_sha256}",
        f"segmenter={algorithm.name}",
        f"weights_sha256={algorithm.weights_sha256}",
    ]
    return hd.sr.AlgorithmIdentification(
        name=(algorithm.classifier_name or algorithm.name)[:64],
        version=(algorithm.classifier_version or algorithm.version)[:64],
        parameters=parameters,
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
                    method=template.combination.concept(),
                    algorithm_id=_classifier_id(algorithm),
                )
            )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(study_instance_uid, "classification", algorithm.model_version),
            identifier=template.tracking_identifier,
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm) if classification is None else _classifier_id(algorithm),
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=template.evaluation_name.concept(), value=value)],
    )


def _region_tracking(identifier: str, finding: RegionFinding) -> hd.sr.TrackingIdentifier:
    """One finding per SEG segment: its region group and its outline group share this identity."""
    return hd.sr.TrackingIdentifier(
        uid=derive_uid(str(finding.segmentation.SOPInstanceUID), "segment", str(finding.segment_number)),
        identifier=f"{identifier} {finding.segment_number}",
    )


def _probability_on_key_image(
    templates: Templates, algorithm: AlgorithmInfo, finding: RegionFinding, labels: Sequence[ClassLabelCode]
) -> hd.sr.Measurement:
    """The most probable class of the region's key image and its probability, in percent: the line OHIF
    shows first beside the outline ("Probability of <class>: 91.00 %")."""
    probabilities = finding.probabilities or ()
    best = int(np.argmax(probabilities))
    label = labels[best]
    return hd.sr.Measurement(
        name=templates.report.classification.probability_name.concept(
            code_value=label.code_value, code_meaning=label.code_meaning
        ),
        value=round(100.0 * float(probabilities[best]), 2),
        unit=templates.report.percent_unit.concept(),
        algorithm_id=_classifier_id(algorithm),
    )


def _region_measurements(
    templates: Templates, algorithm: AlgorithmInfo, finding: RegionFinding, labels: Sequence[ClassLabelCode]
) -> list[hd.sr.Measurement]:
    template = templates.report.regions
    algorithm_id = _algorithm_id(algorithm)
    measurements = []
    if finding.probabilities is not None and labels:
        measurements.append(_probability_on_key_image(templates, algorithm, finding, labels))
    measurements += [
        hd.sr.Measurement(
            name=template.area.concept(),
            value=round(finding.area, 3),
            unit=(template.area_unit_mm2 if finding.area_in_mm2 else template.area_unit_pixels).concept(),
            algorithm_id=algorithm_id,
        )
    ]
    if finding.mean_value is not None:
        hounsfield = finding.value_unit == template.mean_unit_ct.value
        measurements.append(
            hd.sr.Measurement(
                name=(template.mean_ct if hounsfield else template.mean_value).concept(),
                value=round(finding.mean_value, 2),
                unit=(template.mean_unit_ct if hounsfield else template.mean_unit_value).concept(),
                derivation=codes.SCT.Mean,
                algorithm_id=algorithm_id,
            )
        )
    if finding.series:
        measurements.append(
            hd.sr.Measurement(
                name=template.images_with_region.concept(),
                value=finding.images,
                unit=template.images_unit.concept(),
                algorithm_id=algorithm_id,
            )
        )
    return measurements


def _region_groups(
    templates: Templates, algorithm: AlgorithmInfo, finding: RegionFinding, labels: Sequence[ClassLabelCode]
) -> list[object]:
    """The region group (TID 1411, the segment and its numbers) and its outline group (TID 1410)."""
    template = templates.report.regions
    seg = finding.segmentation
    tracking = _region_tracking(template.tracking_identifier, finding)
    referenced_series = seg.ReferencedSeriesSequence[0]
    # TID 1411 with a segment reference (no frame number: PS3.3 forbids Referenced Segment Number beside
    # Referenced Frame Number, which is what a TID 1410 segmentation-frame reference writes).
    if finding.series:
        source: dict[str, object] = {
            "source_series": hd.sr.SourceSeriesForSegmentation(str(referenced_series.SeriesInstanceUID))
        }
    else:
        instance = referenced_series.ReferencedInstanceSequence[0]
        source = {
            "source_images": [
                hd.sr.SourceImageForSegmentation(
                    referenced_sop_class_uid=str(instance.ReferencedSOPClassUID),
                    referenced_sop_instance_uid=str(instance.ReferencedSOPInstanceUID),
                )
            ]
        }
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=finding.segment_number,
        **source,  # type: ignore[arg-type]
    )
    region = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=referenced_segment,
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm),
        measurements=_region_measurements(templates, algorithm, finding, labels),
    )
    outline = finding.outline
    drawn = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline.points,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=outline.sop_class_uid,
                referenced_sop_instance_uid=outline.sop_instance_uid,
                referenced_frame_numbers=[outline.frame_number] if outline.frame_number is not None else None,
            ),
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm),
    )
    return [region, drawn]


def _unused_group(
    templates: Templates, algorithm: AlgorithmInfo, unused: UnusedRegion, number: int, study_instance_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A drawn region the node did not segment: a coded Finding for software, a Comment for the reader.

    TID 1501 has no row for free text, but OHIF writes its labels as a Comment (DCM 121106) in each group
    and reads them back the same way; the reason goes where a viewer that shows group text looks.
    """
    template = templates.report.regions
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(study_instance_uid, "unused", unused.annotation_sop_instance_uid, unused.where, str(number)),
            identifier=f"{template.unused_tracking_identifier} {number}",
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=_algorithm_id(algorithm),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=templates.report.classification.evaluation_name.concept(), value=template.unused.concept()
            )
        ],
    )
    comment = hd.sr.TextContentItem(
        name=template.comment.concept(), value=unused.text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group[0].ContentSequence.append(comment)
    return group


def _totals_group(
    templates: Templates, algorithm: AlgorithmInfo, totals: StudyTotals, study_instance_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    template = templates.report.regions
    algorithm_id = _algorithm_id(algorithm)
    measurements = [
        hd.sr.Measurement(
            name=template.total_area.concept(),
            value=round(totals.area, 3),
            unit=(template.area_unit_mm2 if totals.area_in_mm2 else template.area_unit_pixels).concept(),
            algorithm_id=algorithm_id,
        ),
        hd.sr.Measurement(
            name=template.count.concept(),
            value=totals.regions,
            unit=template.count_unit.concept(),
            algorithm_id=algorithm_id,
        ),
        hd.sr.Measurement(
            name=template.images_with_region.concept(),
            value=totals.images_with_region,
            unit=template.images_unit.concept(),
            algorithm_id=algorithm_id,
        ),
    ]
    evaluations = None
    if totals.regions == 0:
        name = templates.report.classification.evaluation_name.concept()
        evaluations = [hd.sr.QualitativeEvaluation(name=name, value=template.empty_result.concept())]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(study_instance_uid, "totals", algorithm.model_version),
            identifier=template.totals_tracking_identifier,
        ),
        finding_type=template.finding_type.concept(),
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _groups(
    findings: Sequence[RegionFinding],
    unused: Sequence[UnusedRegion],
    totals: StudyTotals,
    classification: Classification | None,
    templates: Templates,
    algorithm: AlgorithmInfo,
    study_instance_uid: str,
) -> list[object]:
    """The report's groups in the order the module notes give (those with image coordinates first)."""
    groups: list[object] = []
    for finding in findings:
        groups += _region_groups(templates, algorithm, finding, classification.labels if classification else ())
    for number, region in enumerate(unused, start=1):
        groups.append(_unused_group(templates, algorithm, region, number, study_instance_uid))
    groups.append(_totals_group(templates, algorithm, totals, study_instance_uid))
    groups.append(_classification_group(templates, algorithm, classification, study_instance_uid))
    return groups


def build_report(
    *,
    sources: Sequence[Dataset],
    findings: Sequence[RegionFinding],
    totals: StudyTotals,
    segmentations: Sequence[Dataset],
    other_evidence: Sequence[Dataset],
    classification: Classification | None,
    templates: Templates,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    manufacturer: str,
    unused: Sequence[UnusedRegion] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the study's measurement report.

    Parameters
    ----------
    sources
        Headers of the images the engine looked at (the image library and evidence).
    findings
        One per region (SEG segment), largest first.
    totals
        All regions together.
    segmentations
        Every SEG written for the study (also those without a region).
    other_evidence
        Further objects the node wrote for this study (secondary capture overlays), or the annotation
        objects a prompted report answers.
    unused
        Drawn regions that gave no prompt (prompted mode), each stated with its reason.

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
        groups = _groups(findings, unused, totals, classification, templates, algorithm, study_instance_uid)
        report = hd.sr.MeasurementReport(
            observation_context=observation_context,
            procedure_reported=templates.report.procedure_reported.concept(),
            imaging_measurements=groups,  # type: ignore[arg-type]
            title=templates.report.title.concept(),
            referenced_images=list(sources),
        )
        evidence = [*sources, *(finding.segmentation for finding in findings), *segmentations, *other_evidence]
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
