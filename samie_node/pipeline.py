"""One study through the engine: load, infer, encode SEG per unit, overlays, classify, report, summarise.

:func:`process_study` is the whole flow and has no networking in it: files in, DICOM objects out. Where
the models run is the engine backend's business (:mod:`samie_node.engine.backend`: this process or Ray
actors), handed in; the worker, which keeps several studies in flight, calls the flow's two halves
itself: :func:`load_images` before the engine, :func:`encode_study` after it. The node encodes SEG and
SR itself whatever the backend: the source headers, the templates and the UIDs are here, the results
are small (bit-packed masks and probabilities), and one encoder means one set of outputs whichever
machine ran the models. The engine keeps only each frame's mask, so memory stays flat as studies grow;
the few frames shown in previews and overlays are decoded again here.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from samie_node.config import Settings
from samie_node.encode.seg import AlgorithmInfo, SegmentSpec, SegUnit, build_segmentation, plan_units
from samie_node.encode.sr import (
    Classification,
    ClassLabelCode,
    RegionFinding,
    RegionOutline,
    StudyTotals,
    build_report,
)
from samie_node.encode.templates import Templates
from samie_node.engine.backend import Engine
from samie_node.engine.infer import FrameResult, Inference
from samie_node.engine.models import ModelsInfo
from samie_node.engine.selection import Candidate, Selection, load_study
from samie_node.errors import ModelError, NoImagesError
from samie_node.overlays import OverlaySeries, frame_images, largest_frames
from samie_node.regions import Region, link_regions, outline, region_stats
from samie_node.scheduler import run_one
from samie_node.summary import ClassificationSummary, OutputFile, StudySummary
from samie_node.timing import StageTimer
from samie_node.uids import derive_uid

LOG = logging.getLogger("samie_node.pipeline")

#: How the per-image class probabilities of a study become the study's (said in the SR and summary).
COMBINATION = "mean of the per-image probabilities"


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object the node wrote for a study.

    ``for_all_destinations`` is False for optional overlays, which go only to destinations that asked
    for secondary captures.
    """

    kind: Literal["SEG", "SR", "SC"]
    dataset: Dataset
    for_all_destinations: bool = True

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


@dataclass(frozen=True)
class StudyResult:
    """What processing a study produced: the objects to deliver, its summary, and PNG previews."""

    study_instance_uid: str
    outputs: list[OutputObject]
    summary: StudySummary
    previews: list[tuple[str, np.ndarray]]
    inference: Inference
    regions: dict[str, list[Region]]

    def mask(self, sop_instance_uid: str, frame_number: int = 1) -> np.ndarray:
        """The union of the regions computed for one source frame (the SAM-IE binary mask)."""
        return self.inference.frames[(sop_instance_uid, frame_number)].mask()

    def segment_mask(
        self, seg_sop_instance_uid: str, segment_number: int, sop_instance_uid: str, frame: int = 1
    ) -> np.ndarray:
        """What segment ``segment_number`` of a SEG holds for one source frame."""
        region = self.regions[seg_sop_instance_uid][segment_number - 1]
        return region.mask(self.inference.frames[(sop_instance_uid, frame)])


@dataclass(frozen=True)
class StudyContext:
    """What the encoding steps share: the study, its engine results and the node's identity."""

    uid: str
    images: Sequence[Candidate]
    inference: Inference
    algorithm: AlgorithmInfo
    models: ModelsInfo
    templates: Templates
    settings: Settings
    overlays: OverlaySeries

    def uid_for(self, *parts: str) -> str:
        return derive_uid(self.uid, *parts, self.algorithm.model_version)


def process_study(
    paths: Sequence[Path],
    engine: Engine,
    templates: Templates,
    settings: Settings,
    *,
    overlays_for_destinations: bool = False,
) -> StudyResult:
    """Run the whole engine on one study's files and build its SEG, SR and overlays.

    Parameters
    ----------
    paths
        The study's instances (any order; non-images are skipped with a reason).
    engine
        Where the models run (local or Ray).
    overlays_for_destinations
        Also build secondary capture overlays for destinations that cannot show SEG.

    Raises
    ------
    NoImagesError
        If no instance could be processed.
    EncodeError
        If the SEG or SR cannot be built.
    """
    timer = StageTimer()
    with timer.stage("load"):
        selection = load_images(paths, settings)
    inference = run_one(engine, selection.images, settings, timer)
    models = engine.models_info()
    if models is None:
        raise ModelError("the engine has not reported its models")
    return encode_study(
        selection, inference, models, templates, settings, timer, overlays_for_destinations=overlays_for_destinations
    )


def load_images(paths: Sequence[Path], settings: Settings) -> Selection:
    """Read a study's headers and select the images the engine processes (no pixel decoding)."""
    return load_study(
        paths,
        settings.selection,
        max_sequence_depth=settings.limits.max_sequence_depth,
        own_manufacturer=settings.output.manufacturer,
    )


def encode_study(
    selection: Selection,
    inference: Inference,
    models: ModelsInfo,
    templates: Templates,
    settings: Settings,
    timer: StageTimer,
    *,
    overlays_for_destinations: bool = False,
) -> StudyResult:
    """Build a study's SEG, SR and overlays from the engine's results.

    Raises
    ------
    NoImagesError
        If no instance could be processed.
    EncodeError
        If the SEG or SR cannot be built.
    """
    inference.skipped.update(selection.skipped)
    if not inference.frames:
        reasons = ", ".join(f"{n} {r}" for r, n in inference.skipped.items()) or "empty"
        raise NoImagesError(f"no processable image in the study: {reasons}")
    study_uid = str(inference.usable[0].StudyInstanceUID)
    model_version = models.algorithm.model_version
    overlays = OverlaySeries(
        templates,
        derive_uid(study_uid, "sc-series", model_version),
        settings.output.series_number_sc,
        settings.output.manufacturer,
        model_version,
    )
    study = StudyContext(
        study_uid, selection.images, inference, models.algorithm, models, templates, settings, overlays
    )
    with timer.stage("encode"):
        classification = combine_classification(study)
        encoded = encode_segmentations(study, classification)
        previews, destination_overlays = study_overlays(study, for_destinations=overlays_for_destinations)
        outputs = encoded.outputs + destination_overlays
        if settings.output.sr:
            outputs.append(encode_report(study, encoded, outputs, classification))
    summary = summarise(study, outputs, classification, encoded, timer)
    LOG.info(
        "study processed study_instance_uid=%s images=%d frames=%d regions=%d outputs=%d skipped=%d ms=%s",
        study.uid,
        summary.images,
        summary.frames,
        summary.regions,
        len(outputs),
        sum(summary.skipped.values()),
        summary.timings_ms,
    )
    return StudyResult(study.uid, outputs, summary, previews, inference, encoded.regions)


@dataclass
class Segmentations:
    """What encoding the study's SEGs produced."""

    outputs: list[OutputObject] = field(default_factory=list)
    findings: list[RegionFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    regions: dict[str, list[Region]] = field(default_factory=dict)  # SEG SOP Instance UID -> its segments


def encode_segmentations(study: StudyContext, classification: Classification | None) -> Segmentations:
    """One SEG per unit a SEG can reference, a segment and a finding per region; overlays (and a note) for
    the units a SEG cannot reference."""
    encoded = Segmentations()
    for index, unit in enumerate(plan_units(study.inference.usable), start=1):
        if unit.seg_possible:
            frames = [study.inference.frames[key] for key in unit.frame_keys]
            regions = link_regions(frames, study.settings.output.max_segments)
            seg = _segmentation(study, unit, index, frames, regions, _series_description(study, classification))
            encoded.outputs.append(OutputObject("SEG", seg))
            encoded.regions[str(seg.SOPInstanceUID)] = regions
            encoded.findings += [region_finding(study, unit, seg, region, frames) for region in regions]
            continue
        encoded.notes.append(
            f"multi-frame image {unit.key} has no frame of reference: a SEG cannot reference it, "
            "so its outline is sent as secondary capture overlays"
        )
        LOG.info("no SEG possible for sop_instance_uid=%s (multi-frame without frame of reference)", unit.key)
        frames = largest_frames(
            (study.inference.frames[key] for key in unit.frame_keys), study.settings.output.max_overlays
        )
        images = frame_images(frames, study.images, study.settings.limits.max_pixels)
        for frame in frames:
            if frame.key in images and (sc := study.overlays.add(unit.sources[0], frame, images[frame.key])):
                encoded.outputs.append(OutputObject("SC", sc))
    return encoded


def _series_description(study: StudyContext, classification: Classification | None) -> str:
    """The SEG's series description; with a classifier it names the study's class and its probability,
    which OHIF shows as the segmentation's name (thumbnail and segmentation panel)."""
    text = study.templates.segments.series_description
    if classification is not None:
        text += f" - {classification.predicted.code_meaning} {float(classification.probabilities.max()):.0%}"
    return text[:64]


def _segmentation(
    study: StudyContext,
    unit: SegUnit,
    index: int,
    frames: list[FrameResult],
    regions: list[Region],
    series_description: str,
) -> Dataset:
    template = study.templates.segments
    if regions:
        labels = [
            template.region.merged_label if r.merged else template.region.label.format(number=r.number) for r in regions
        ]
        specs = [
            SegmentSpec(r.number, label, template.colour(r.number)) for r, label in zip(regions, labels, strict=True)
        ]
        masks = {frame.key: np.stack([region.mask(frame) for region in regions]) for frame in frames}
    else:  # empty is reported, not hidden: one empty segment that says so
        specs = [SegmentSpec(1, template.region.empty_label, template.colour(1))]
        masks = {frame.key: np.zeros((1, *frame.shape), bool) for frame in frames}
    output = study.settings.output
    return build_segmentation(
        unit,
        masks,
        specs,
        templates=study.templates,
        algorithm=study.algorithm,
        series_instance_uid=study.uid_for("seg-series"),
        sop_instance_uid=derive_uid(study.uid, unit.key, "seg", study.algorithm.model_version),
        series_number=output.series_number_seg,
        instance_number=index,
        manufacturer=output.manufacturer,
        keep_empty_frames=output.keep_empty_frames,
        series_description=series_description,
    )


def region_finding(
    study: StudyContext,
    unit: SegUnit,
    seg: Dataset,
    region: Region,
    frames: list[FrameResult],
    label: str | None = None,
) -> RegionFinding:
    """What the SR says of one region: its numbers and its outline where it is largest (``label``: the
    region's name, else the template's numbered one)."""
    by_key = {frame.key: frame for frame in frames}
    stats = region_stats(region, by_key)
    sop_instance_uid, frame_number = stats.largest_frame
    source = next(ds for ds in unit.sources if str(ds.SOPInstanceUID) == sop_instance_uid)
    multi_frame = int(source.get("NumberOfFrames", 1) or 1) > 1
    return RegionFinding(
        segmentation=seg,
        segment_number=region.number,
        label=label or study.templates.segments.region.label_for(region.number, merged=region.merged),
        area=stats.area,
        area_in_mm2=stats.area_in_mm2,
        mean_value=stats.mean_value,
        value_unit=stats.value_unit,
        images=stats.images,
        series=len(frames) > 1,
        outline=RegionOutline(
            str(source.SOPClassUID),
            sop_instance_uid,
            frame_number if multi_frame else None,
            outline(region.mask(by_key[stats.largest_frame])),
        ),
        probabilities=by_key[stats.largest_frame].probabilities,
    )


def study_overlays(
    study: StudyContext, *, for_destinations: bool
) -> tuple[list[tuple[str, np.ndarray]], list[OutputObject]]:
    """PNG previews of the frames with the largest regions and, when asked, their overlays for destinations."""
    no_seg = {unit.key for unit in plan_units(study.inference.usable) if not unit.seg_possible}
    candidates = (frame for frame in study.inference.frames.values() if frame.sop_instance_uid not in no_seg)
    frames = largest_frames(candidates, study.settings.output.max_overlays)
    images = frame_images(frames, study.images, study.settings.limits.max_pixels)
    series = study.overlays
    previews = [
        (f"{frame.sop_instance_uid}-{frame.frame_number}", series.picture(images[frame.key], frame.mask()))
        for frame in frames
        if frame.key in images
    ]
    overlays: list[OutputObject] = []
    if for_destinations:
        sources = {str(ds.SOPInstanceUID): ds for ds in study.inference.usable}
        for frame in frames:
            if frame.key in images and (sc := series.add(sources[frame.sop_instance_uid], frame, images[frame.key])):
                overlays.append(OutputObject("SC", sc, for_all_destinations=False))
    return previews, overlays


def combine_classification(study: StudyContext) -> Classification | None:
    """The study's class: the mean of the per-image probabilities (None without a classifier)."""
    probabilities = study.inference.probabilities
    if study.models.class_labels is None or probabilities is None:
        return None
    labels = tuple(
        ClassLabelCode(label.name, label.code_value, label.coding_scheme_designator, label.code_meaning)
        for label in study.models.class_labels
    )
    return Classification(labels, probabilities.mean(axis=0), len(probabilities))


def totals(study: StudyContext, findings: list[RegionFinding]) -> StudyTotals:
    """All regions of the study together (areas in mm2 only when every region's is)."""
    in_mm2 = all(finding.area_in_mm2 for finding in findings)
    return StudyTotals(
        area=sum(finding.area for finding in findings),
        area_in_mm2=in_mm2,
        regions=len(findings),
        images_with_region=sum(1 for frame in study.inference.frames.values() if frame.area_pixels),
    )


def encode_report(
    study: StudyContext,
    encoded: Segmentations,
    outputs: list[OutputObject],
    classification: Classification | None,
) -> OutputObject:
    """The study's TID 1500 measurement report, referencing its sources, SEGs and overlays."""
    output = study.settings.output
    sr = build_report(
        sources=study.inference.usable,
        findings=encoded.findings,
        totals=totals(study, encoded.findings),
        segmentations=[o.dataset for o in outputs if o.kind == "SEG"],
        other_evidence=[o.dataset for o in outputs if o.kind == "SC"],
        classification=classification,
        templates=study.templates,
        algorithm=study.algorithm,
        series_instance_uid=study.uid_for("sr-series"),
        sop_instance_uid=study.uid_for("sr"),
        series_number=output.series_number_sr,
        manufacturer=output.manufacturer,
    )
    return OutputObject("SR", sr)


def summarise(
    study: StudyContext,
    outputs: list[OutputObject],
    classification: Classification | None,
    encoded: Segmentations,
    timer: StageTimer,
) -> StudySummary:
    """The typed summary the index, ``status``, the demo and the console read."""
    frames = study.inference.frames.values()
    return StudySummary(
        images=len(study.inference.usable),
        frames=len(frames),
        frames_with_region=sum(1 for frame in frames if frame.area_pixels),
        regions=len(encoded.findings),
        classification=(
            ClassificationSummary(
                classification.predicted.name,
                round(float(classification.probabilities.max()), 4),
                study.algorithm.name,
                COMBINATION,
            )
            if classification is not None
            else None
        ),
        outputs=dict(Counter(o.kind for o in outputs)),
        skipped=dict(study.inference.skipped),
        notes=encoded.notes,
        timings_ms=timer.rounded(),
        model_version=study.algorithm.model_version,
        output_files=[OutputFile(o.kind, o.sop_class_uid, o.sop_instance_uid) for o in outputs],
        images_digest=images_digest(study.images),
    )


def images_digest(images: Sequence[Candidate]) -> str:
    """A fingerprint of which images were processed (their SOP Instance UIDs, in any order)."""
    uids = sorted(str(candidate.header.SOPInstanceUID) for candidate in images)
    return hashlib.sha256("\n".join(uids).encode("ascii", "replace")).hexdigest()
