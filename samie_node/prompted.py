"""The radiologist's drawings answered: annotation objects of a study as box prompts, and their own SEG and SR.

A viewer's annotation object (a TID 1500 SR such as OHIF's "Create Report", or a presentation state) that
arrives in a study and was not written by the node is read for the regions drawn on the study's images
(:mod:`samie_node.annotations`), each region is checked against the images the node has
(:mod:`samie_node.annotation_fit`), and the segmenter gets one box prompt per region and frame. The answer
is a series of its own: a SEG with one segment per drawn region (named as the radiologist named it, else
"Region n") and an SR with each region's area and the model, which references the SEG's segments and
lists the annotation objects it answers as evidence. The automatic results of the study are not touched.

Loop guard: an object whose Manufacturer is the node's own (``output.manufacturer``) is never a prompt,
so the node's own SRs, sent back by a PACS, are not answered again. An annotation object is answered
once (the study summary lists the answered ones); the same drawings sent again are not recomputed.

Regions that give no prompt (degenerate, off the image, on a missing frame, on an image the node does not
have, a SCOORD3D on no image plane) are logged with their reason, listed in the study's notes and stated
in the prompted SR, one group per region with the annotation object, where in it and why; the other regions
carry on. When no drawn region gives a prompt, the answer is the SR alone (no SEG: a SEG holds at least one
segment), which says, as the automatic mode's SR does, that no region was segmented, and lists why each
drawn region was not used. An object with nothing drawn in it (a text report, a measurement report without
spatial coordinates) asks for no answer: it is logged and noted only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from samie_node.annotation_fit import ImageGeometry, fit, image_geometry, locate
from samie_node.annotations import BoxPrompt, SkippedRegion, is_annotation_object, read_annotations
from samie_node.config import Settings
from samie_node.encode.seg import SegmentSpec, SegUnit, build_segmentation, plan_units
from samie_node.encode.sr import UnusedRegion, build_report
from samie_node.encode.templates import Templates
from samie_node.engine.infer import FrameKey, FramePrompt, FrameResult, Inference
from samie_node.engine.models import ModelsInfo
from samie_node.engine.selection import Candidate, Selection
from samie_node.errors import AnnotationError, NoImagesError
from samie_node.overlays import OverlaySeries
from samie_node.pipeline import (
    OutputObject,
    Segmentations,
    StudyContext,
    StudyResult,
    images_digest,
    region_finding,
    summarise,
    totals,
)
from samie_node.regions import Region
from samie_node.summary import StudySummary
from samie_node.timing import StageTimer
from samie_node.uids import derive_uid

LOG = logging.getLogger("samie_node.prompted")

#: Added to the template's series descriptions, so the prompted series is told apart in the viewer.
SERIES_SUFFIX = " (drawn boxes)"


@dataclass
class DrawnRegion:
    """One region as drawn, and the frame prompts it became (several when it names no frame of a
    multi-frame image)."""

    label: str
    annotation_sop_instance_uid: str
    prompts: list[BoxPrompt]


@dataclass
class PromptJob:
    """The prompted part of a study: the annotation objects answered, their regions, and what was set aside.

    Attributes
    ----------
    annotations
        The annotation objects answered (headers, referenced as evidence in the SR).
    regions
        Each region that gives at least one prompt, in the order drawn.
    missing
        Prompts on images the node does not have.
    skipped
        Regions that give no prompt, with their reasons.
    images
        The images the prompts lie on.
    report_sources
        Headers of the images a report on the drawings references when no region gives a prompt: those
        the drawings name that the node has, else all the study's images.
    """

    annotations: list[Dataset]
    regions: list[DrawnRegion] = field(default_factory=list)
    missing: list[BoxPrompt] = field(default_factory=list)
    skipped: list[SkippedRegion] = field(default_factory=list)
    images: list[Candidate] = field(default_factory=list)
    report_sources: list[Dataset] = field(default_factory=list)

    @property
    def annotation_uids(self) -> list[str]:
        """SOP Instance UIDs of the annotation objects, in order."""
        return [str(ds.SOPInstanceUID) for ds in self.annotations]

    def frame_prompts(self) -> dict[str, tuple[FramePrompt, ...]]:
        """SOP Instance UID -> its (frame, box) prompts, regions in order (the engine's input)."""
        prompts: dict[str, list[FramePrompt]] = {}
        for region in self.regions:
            for prompt in region.prompts:
                frame = prompt.frame_number or 1
                prompts.setdefault(prompt.sop_instance_uid, []).append((frame, prompt.box))
        return {uid: tuple(boxes) for uid, boxes in prompts.items()}

    @property
    def drawn(self) -> bool:
        """True when something was drawn: a region to segment, or one that was not used for a reason."""
        return bool(self.regions or self.missing or any(s.drawn for s in self.skipped))

    def unused(self) -> list[UnusedRegion]:
        """What the SR states of the regions that gave no prompt (UIDs and reasons, no PHI)."""
        unused = [UnusedRegion(s.annotation_sop_instance_uid, s.where, s.reason) for s in self.skipped]
        unused += [
            UnusedRegion(
                p.annotation_sop_instance_uid,
                f"region on image {p.sop_instance_uid}" + (f" frame {p.frame_number}" if p.frame_number else ""),
                "the node does not have this image",
            )
            for p in self.missing
        ]
        return unused

    def notes(self) -> list[str]:
        """What the summary says of the regions that gave no prompt (UIDs and reasons, no PHI)."""
        notes = [f"annotation {s.annotation_sop_instance_uid}: {s.where} not used: {s.reason}" for s in self.skipped]
        notes += [
            f"annotation {p.annotation_sop_instance_uid}: image {p.sop_instance_uid} is not on the node"
            for p in self.missing
        ]
        return notes


def annotation_objects(paths: Iterable[Path], own_manufacturer: str, answered: Iterable[str] = ()) -> list[Dataset]:
    """The study's annotation objects that ask for an answer: not the node's own, not answered before.

    Files that are not annotation objects, or cannot be read, are passed over (the automatic path reports
    unreadable files).
    """
    done = set(answered)
    found: list[Dataset] = []
    for path in paths:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # any malformed file: not a prompt; the automatic path counts it
            continue
        if not is_annotation_object(str(dataset.get("SOPClassUID", "") or "")):
            continue
        uid = str(dataset.get("SOPInstanceUID", "") or "")
        if str(dataset.get("Manufacturer", "") or "") == own_manufacturer:
            LOG.debug("the node's own object is not a prompt sop_instance_uid=%s", uid)
        elif uid and uid not in done:
            found.append(dataset)
    return found


def _geometries(images: Sequence[Candidate]) -> dict[str, ImageGeometry]:
    geometries: dict[str, ImageGeometry] = {}
    for candidate in images:
        try:
            geometry = image_geometry(candidate.header)
        except (AnnotationError, ValueError, TypeError):
            continue
        geometries[geometry.sop_instance_uid] = geometry
    return geometries


def plan_prompts(annotations: Sequence[Dataset], images: Sequence[Candidate]) -> PromptJob:
    """Read every region of ``annotations`` and fit it to the study's ``images`` (see the module notes)."""
    job = PromptJob(list(annotations))
    geometries = _geometries(images)
    drawn: list[BoxPrompt] = []
    for dataset in annotations:
        found = read_annotations(dataset)
        job.skipped += found.skipped
        drawn += found.prompts
        for volume in found.volume_regions:
            try:
                drawn.append(locate(volume, list(geometries.values())))
            except AnnotationError as exc:
                where = f"3-D region {volume.tracking_uid or volume.label or ''}".strip()
                job.skipped.append(SkippedRegion(volume.annotation_sop_instance_uid, where, str(exc)))
    for prompt in drawn:
        fitted = fit([prompt], geometries)
        job.skipped += fitted.skipped
        job.missing += fitted.missing
        if fitted.prompts:
            job.regions.append(DrawnRegion(prompt.label, prompt.annotation_sop_instance_uid, fitted.prompts))
    for skipped in job.skipped:
        LOG.warning(
            "drawn region not used annotation=%s %s: %s",
            skipped.annotation_sop_instance_uid,
            skipped.where,
            skipped.reason,
        )
    for prompt in job.missing:
        LOG.warning(
            "drawn region on an image the node does not have annotation=%s sop_instance_uid=%s",
            prompt.annotation_sop_instance_uid,
            prompt.sop_instance_uid,
        )
    wanted = {prompt.sop_instance_uid for region in job.regions for prompt in region.prompts}
    job.images = [c for c in images if str(c.header.SOPInstanceUID) in wanted]
    named = {prompt.sop_instance_uid for prompt in drawn}
    job.report_sources = [c.header for c in images if str(c.header.SOPInstanceUID) in named] or [
        c.header for c in images
    ]
    return job


def _regions(job: PromptJob, frames: dict[FrameKey, FrameResult]) -> list[tuple[DrawnRegion, Region]]:
    """Each drawn region as a :class:`Region` over the engine's masks (one mask per prompt, in order)."""
    used: dict[FrameKey, int] = {}
    regions: list[tuple[DrawnRegion, Region]] = []
    for drawn in job.regions:
        region = Region()
        for prompt in drawn.prompts:
            key = (prompt.sop_instance_uid, prompt.frame_number or 1)
            index = used.get(key, 0)
            used[key] = index + 1
            if key in frames and index < frames[key].regions:
                region.members.setdefault(key, []).append(index)
        if region.members:
            regions.append((drawn, region))
        else:
            where = f"region {drawn.label or ''} on image {drawn.prompts[0].sop_instance_uid}".replace("  ", " ")
            job.skipped.append(
                SkippedRegion(drawn.annotation_sop_instance_uid, where, "its image could not be decoded")
            )
    return regions


def _unit_masks(
    unit: SegUnit, regions: list[Region], frames: dict[FrameKey, FrameResult]
) -> dict[FrameKey, np.ndarray]:
    """Per frame of the unit, one plane per region (empty on frames nothing was drawn on)."""
    masks: dict[FrameKey, np.ndarray] = {}
    for key in unit.frame_keys:
        source = next(ds for ds in unit.sources if str(ds.SOPInstanceUID) == key[0])
        shape = (int(source.Rows), int(source.Columns))
        frame = frames.get(key)
        planes = [region.mask(frame) if frame is not None else np.zeros(shape, bool) for region in regions]
        masks[key] = np.stack(planes)
    return masks


def _encode_segmentations(study: StudyContext, job: PromptJob, key: str) -> Segmentations:
    """One SEG per unit the drawn regions lie in, one segment per region, named as drawn."""
    encoded = Segmentations()
    frames = study.inference.frames
    template = study.templates.segments
    drawn_regions = _regions(job, frames)
    for index, unit in enumerate(plan_units(study.inference.usable), start=1):
        keys = set(unit.frame_keys)
        mine = [(drawn, region) for drawn, region in drawn_regions if keys.intersection(region.members)]
        if not mine:
            continue
        labels = []
        for number, (drawn, region) in enumerate(mine, start=1):
            region.number = number
            labels.append(drawn.label or template.region.label.format(number=number))
        specs = [SegmentSpec(n, label, template.colour(n), True) for n, label in enumerate(labels, start=1)]
        regions = [region for _, region in mine]
        seg = build_segmentation(
            unit,
            _unit_masks(unit, regions, frames),
            specs,
            templates=study.templates,
            algorithm=study.algorithm,
            series_instance_uid=derive_uid(study.uid, key, "seg-series", study.algorithm.model_version),
            sop_instance_uid=derive_uid(study.uid, key, unit.key, "seg", study.algorithm.model_version),
            series_number=study.settings.prompts.series_number_seg,
            instance_number=index,
            manufacturer=study.settings.output.manufacturer,
            keep_empty_frames=False,
            series_description=(template.series_description[: 64 - len(SERIES_SUFFIX)] + SERIES_SUFFIX),
        )
        encoded.outputs.append(OutputObject("SEG", seg))
        encoded.regions[str(seg.SOPInstanceUID)] = regions
        unit_frames = [frames[k] for k in unit.frame_keys if k in frames]
        encoded.findings += [
            region_finding(study, unit, seg, region, unit_frames, label)
            for region, label in zip(regions, labels, strict=True)
        ]
    return encoded


def _report(study: StudyContext, job: PromptJob, key: str, encoded: Segmentations) -> Dataset:
    """The prompted SR: the segmented regions, then each drawn region not used and why, then the totals."""
    settings, version = study.settings, study.algorithm.model_version
    unused = job.unused()
    sr = build_report(
        sources=study.inference.usable or job.report_sources,
        findings=encoded.findings,
        totals=totals(study, encoded.findings),
        segmentations=[o.dataset for o in encoded.outputs],
        other_evidence=job.annotations,
        classification=None,
        templates=study.templates,
        algorithm=study.algorithm,
        series_instance_uid=derive_uid(study.uid, key, "sr-series", version),
        sop_instance_uid=derive_uid(study.uid, key, "sr", version),
        series_number=settings.prompts.series_number_sr,
        manufacturer=settings.output.manufacturer,
        unused=unused,
    )
    # The series description is what a viewer's study browser shows of the SR: say there that regions were
    # left out, as OHIF draws no group without image coordinates (the reasons are in the report).
    suffix = SERIES_SUFFIX + (f", {len(unused)} not used" if unused else "")
    sr.SeriesDescription = study.templates.report.series_description[: 64 - len(suffix)] + suffix
    return sr


def encode_prompted(
    job: PromptJob,
    inference: Inference,
    models: ModelsInfo,
    templates: Templates,
    settings: Settings,
    timer: StageTimer,
) -> StudyResult:
    """The prompted SEG(s) and SR of a study from the engine's answer to ``job``.

    A region whose image could not be decoded is stated in the SR as not used; when that leaves no
    region, the SR alone answers (as :func:`encode_not_used`).

    Raises
    ------
    NoImagesError
        If nothing can be written (no region segmented and ``output.sr`` off), or no image to reference.
    EncodeError
        If the SEG or SR cannot be built.
    """
    sources = inference.usable or job.report_sources
    if not sources:
        raise NoImagesError("the study has no image to report the drawn regions on")
    study_uid = str(sources[0].StudyInstanceUID)
    version = models.algorithm.model_version
    key = derive_uid(study_uid, "prompted", *sorted(job.annotation_uids))
    overlays = OverlaySeries(templates, derive_uid(key, "sc"), 0, settings.output.manufacturer, version)
    study = StudyContext(study_uid, job.images, inference, models.algorithm, models, templates, settings, overlays)
    with timer.stage("encode"):
        encoded = _encode_segmentations(study, job, key) if job.regions else Segmentations()
        outputs = list(encoded.outputs)
        if settings.output.sr:
            outputs.append(OutputObject("SR", _report(study, job, key, encoded)))
    if not outputs:
        raise NoImagesError("no drawn region could be segmented, and output.sr is off")
    encoded.notes += job.notes()
    summary = summarise(study, outputs, None, encoded, timer)
    summary = dataclasses.replace(summary, answered_annotations=job.annotation_uids)
    LOG.info(
        "prompts answered study_instance_uid=%s annotations=%d regions=%d not_used=%d ms=%s",
        study_uid,
        len(job.annotations),
        len(encoded.findings),
        len(job.skipped) + len(job.missing),
        summary.timings_ms,
    )
    return StudyResult(study_uid, outputs, summary, [], inference, encoded.regions)


def encode_not_used(
    job: PromptJob, models: ModelsInfo, templates: Templates, settings: Settings, timer: StageTimer
) -> StudyResult:
    """The answer to drawings of which no region gave a prompt: the prompted SR alone, stating that no
    region was segmented and why each drawn region was not used (the engine is not called).

    Raises
    ------
    NoImagesError
        If the study has no image for the SR to reference, or ``output.sr`` is off.
    EncodeError
        If the SR cannot be built.
    """
    inference = Inference({}, None, list(job.report_sources), Counter())
    return encode_prompted(job, inference, models, templates, settings, timer)


def noted(summary: StudySummary, job: PromptJob) -> StudySummary:
    """``summary`` after drawings that ask for no answer (nothing drawn in them): their notes added and
    their objects recorded as answered, so they are not read again (``serve`` and ``process`` alike)."""
    return dataclasses.replace(
        summary,
        notes=[*summary.notes, *job.notes()],
        answered_annotations=[*summary.answered_annotations, *job.annotation_uids],
    )


def merge_summaries(automatic: StudySummary | None, prompted: StudySummary) -> StudySummary:
    """The study's summary after its prompted part: the automatic numbers kept, the prompted outputs,
    notes and answered annotations added."""
    if automatic is None:
        return prompted
    outputs = dict(automatic.outputs)
    for kind, count in prompted.outputs.items():
        outputs[f"{kind} (drawn)"] = outputs.get(f"{kind} (drawn)", 0) + count
    timings = dict(automatic.timings_ms)
    for stage, ms in prompted.timings_ms.items():
        timings[f"prompted {stage}"] = ms
    return dataclasses.replace(
        automatic,
        outputs=outputs,
        notes=[*automatic.notes, *prompted.notes],
        timings_ms=timings,
        output_files=[*automatic.output_files, *prompted.output_files],
        answered_annotations=[*automatic.answered_annotations, *prompted.answered_annotations],
    )


def needs_automatic(previous: StudySummary | None, selection: Selection, job: PromptJob | None) -> bool:
    """False when only new drawings re-opened the study: its images were all processed before."""
    if job is None or previous is None or not previous.images_digest:
        return True
    return previous.images_digest != images_digest(selection.images)
