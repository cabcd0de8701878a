"""One study through the engine: load, select images, segment, enhance, classify, encode.

:func:`process_study` is the whole flow and has no networking in it: files in, DICOM objects out. Pixels
are held one batch at a time (masks are kept, bit-packed, for the SEG; a few images are kept for
overlays), so memory stays flat as studies grow.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from samie_node.config import Settings
from samie_node.encode.sc import SC_SOP_CLASS_UID, build_overlay, burn_outline
from samie_node.encode.seg import build_segmentation, plan_units
from samie_node.encode.sr import Classification, ClassLabelCode, SegmentSummary, build_report
from samie_node.encode.templates import Templates
from samie_node.engine.enhance import sam_ie
from samie_node.engine.models import Models
from samie_node.engine.prepare import PreparedFrame, prepare_dataset
from samie_node.engine.selection import Candidate, select_images
from samie_node.errors import EncodeError, InvalidUidError, NoImagesError, SamieNodeError
from samie_node.uids import derive_uid, require_uid

LOG = logging.getLogger("samie_node.pipeline")

FrameKey = tuple[str, int]  # (SOP Instance UID, 1-based frame number)


@dataclass
class _FrameRecord:
    shape: tuple[int, int]
    packed_mask: np.ndarray
    regions: int
    area_pixels: int
    pixel_spacing: tuple[float, float] | None

    def mask(self) -> np.ndarray:
        rows, columns = self.shape
        return np.unpackbits(self.packed_mask, count=rows * columns).reshape(rows, columns).astype(bool)


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
    """What processing a study produced: the objects to deliver, a summary for the index, and previews."""

    study_instance_uid: str
    outputs: list[OutputObject]
    summary: dict[str, Any]
    previews: list[tuple[str, np.ndarray]]
    frame_masks: dict[FrameKey, _FrameRecord]

    def mask(self, sop_instance_uid: str, frame_number: int = 1) -> np.ndarray:
        """The binary mask computed for one source frame (what the SEG holds for it)."""
        return self.frame_masks[(sop_instance_uid, frame_number)].mask()


@dataclass
class _OverlayPool:
    """Keeps the images of the frames with the largest regions, per group, at most ``size`` each."""

    size: int
    heaps: dict[str, list[tuple[int, FrameKey, np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def offer(self, group: str, key: FrameKey, area: int, image: np.ndarray, mask: np.ndarray) -> None:
        heap = self.heaps.setdefault(group, [])
        item = (area, key, image, mask)
        if len(heap) < self.size:
            heapq.heappush(heap, item)
        elif area > heap[0][0]:
            heapq.heapreplace(heap, item)

    def largest(self, group: str) -> list[tuple[FrameKey, np.ndarray, np.ndarray]]:
        return [(key, image, mask) for _, key, image, mask in sorted(self.heaps.get(group, []), reverse=True)]


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, stage: str, started: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000


def nesting_depth(dataset: Dataset) -> int:
    """How deeply sequences nest in ``dataset`` (0 for none), walked without recursion."""
    deepest = 0
    stack = [(dataset, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for element in current:
            if element.VR == "SQ":
                stack.extend((item, depth + 1) for item in element.value)
    return deepest


def read_candidates(paths: Sequence[Path], max_sequence_depth: int) -> tuple[list[Candidate], Counter[str]]:
    """Read every file's header (pixel data deferred); unreadable or too deeply nested files are counted,
    not fatal. pydicom parses sequences recursively, so an absurd nesting ends as a RecursionError here,
    and a merely deep one is refused by ``limits.max_sequence_depth`` before anything else walks it."""
    candidates: list[Candidate] = []
    unreadable: Counter[str] = Counter()
    for path in paths:
        try:
            # Large values (pixel data) are deferred, not read: the header still shows that they exist.
            header = pydicom.dcmread(path, defer_size=4096)
            too_deep = nesting_depth(header) > max_sequence_depth  # also converts every value once
        except Exception as exc:  # any malformed file (bad VR, bad value): counted, the rest carries on
            unreadable[f"unreadable file ({type(exc).__name__})"] += 1
            continue
        if too_deep:
            unreadable[f"sequences nested deeper than {max_sequence_depth}"] += 1
            continue
        bad_uid = _first_invalid_uid(header)
        if bad_uid:
            unreadable[f"invalid {bad_uid}"] += 1
            continue
        candidates.append(Candidate(path, header))
    return candidates, unreadable


#: UIDs a source image must carry, valid, before the encoders copy them or look SOP classes up by them.
_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _first_invalid_uid(header: Dataset) -> str | None:
    """The keyword of the first missing or malformed UID of a source image (Frame of Reference UID only
    when present), or None when all are valid."""
    present = [*_SOURCE_UIDS] + (["FrameOfReferenceUID"] if "FrameOfReferenceUID" in header else [])
    for keyword in present:
        try:
            require_uid(header.get(keyword), keyword)
        except InvalidUidError:
            return keyword
    return None


def _frames(
    images: Sequence[Candidate], max_pixels: int, skipped: Counter[str], usable: list[Dataset], timer: _Timer
) -> Iterator[PreparedFrame]:
    for candidate in images:
        started = time.perf_counter()
        try:
            frames = prepare_dataset(pydicom.dcmread(candidate.path), max_pixels=max_pixels)
        except SamieNodeError as exc:
            skipped[str(exc)[:120]] += 1
            LOG.warning("instance skipped sop_instance_uid=%s: %s", candidate.header.SOPInstanceUID, exc)
            continue
        except Exception as exc:  # decoders raise many types; one bad instance must not stop the study
            skipped[f"cannot decode ({type(exc).__name__})"] += 1
            LOG.warning("instance skipped sop_instance_uid=%s: %s", candidate.header.SOPInstanceUID, type(exc).__name__)
            continue
        finally:
            timer.add("prepare", started)
        usable.append(candidate.header)
        yield from frames


def _batches(frames: Iterator[PreparedFrame], size: int) -> Iterator[list[PreparedFrame]]:
    batch: list[PreparedFrame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _regions(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(count) - 1


def process_study(
    paths: Sequence[Path],
    models: Models,
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
    overlays_for_destinations
        Also build secondary capture overlays for destinations that cannot show SEG.

    Raises
    ------
    NoImagesError
        If no instance could be processed.
    EncodeError
        If the SEG or SR cannot be built.
    """
    timer = _Timer()
    started = time.perf_counter()
    candidates, skipped = read_candidates(paths, settings.limits.max_sequence_depth)
    selection = select_images(candidates, settings.selection, settings.output.manufacturer)
    skipped.update(selection.skipped)
    timer.add("load", started)
    no_for_multiframe = {
        str(c.header.SOPInstanceUID)
        for c in selection.images
        if int(c.header.get("NumberOfFrames", 1) or 1) > 1 and not c.header.get("FrameOfReferenceUID")
    }

    records: dict[FrameKey, _FrameRecord] = {}
    probabilities: list[np.ndarray] = []
    pool = _OverlayPool(settings.output.max_overlays)
    usable: list[Dataset] = []
    frames = _frames(selection.images, settings.limits.max_pixels, skipped, usable, timer)
    for batch in _batches(frames, settings.segmenter.batch_size):
        images = [frame.image for frame in batch]
        started = time.perf_counter()
        mask_sets = models.segmenter.segment(images)
        timer.add("segment", started)
        started = time.perf_counter()
        enhanced = [sam_ie(image, masks) for image, masks in zip(images, mask_sets, strict=True)]
        timer.add("enhance", started)
        if models.classifier is not None:
            started = time.perf_counter()
            probabilities.append(models.classifier.predict(images, [e.image for e in enhanced]))
            timer.add("classify", started)
        for frame, result in zip(batch, enhanced, strict=True):
            key = (frame.sop_instance_uid, frame.frame_number)
            mask = result.binary_mask
            area = int(mask.sum())
            records[key] = _FrameRecord(
                mask.shape, np.packbits(mask, axis=None), _regions(mask), area, frame.pixel_spacing
            )
            if area:
                group = frame.sop_instance_uid if frame.sop_instance_uid in no_for_multiframe else "study"
                pool.offer(group, key, area, frame.image, mask)
    if not records:
        raise NoImagesError(
            "no processable image in the study: " + (", ".join(f"{n} {r}" for r, n in skipped.items()) or "empty")
        )

    started = time.perf_counter()
    study_uid = str(usable[0].StudyInstanceUID)
    algorithm = models.algorithm
    model_version = algorithm.model_version
    manufacturer = settings.output.manufacturer
    outputs: list[OutputObject] = []
    summaries: list[SegmentSummary] = []
    notes: list[str] = []
    seg_series = derive_uid(study_uid, "seg-series", model_version)
    sc_series = derive_uid(study_uid, "sc-series", model_version)
    for index, unit in enumerate(plan_units(usable), start=1):
        if not unit.seg_possible:
            notes.append(
                f"multi-frame image {unit.key} has no frame of reference: a SEG cannot reference it, "
                "so its outline is sent as secondary capture overlays"
            )
            LOG.info(
                "no SEG possible for sop_instance_uid=%s (multi-frame without frame of reference); writing overlays",
                unit.key,
            )
            outputs.extend(
                _overlays(
                    unit.sources[0], pool.largest(unit.key), templates, settings, sc_series, model_version, for_all=True
                )
            )
            continue
        seg = build_segmentation(
            unit,
            {key: records[key].mask()[None] for key in unit.frame_keys},
            templates=templates,
            algorithm=algorithm,
            series_instance_uid=seg_series,
            sop_instance_uid=derive_uid(study_uid, unit.key, "seg", model_version),
            series_number=settings.output.series_number_seg,
            instance_number=index,
            manufacturer=manufacturer,
            keep_empty_frames=settings.output.keep_empty_frames,
        )
        outputs.append(OutputObject("SEG", seg))
        unit_records = [records[key] for key in unit.frame_keys]
        in_mm2 = all(r.pixel_spacing is not None for r in unit_records)
        total_area = 0.0
        for record in unit_records:
            spacing = record.pixel_spacing
            total_area += record.area_pixels * (spacing[0] * spacing[1] if spacing is not None and in_mm2 else 1.0)
        summaries.append(
            SegmentSummary(
                segmentation=seg,
                segment_number=1,
                area=total_area,
                area_in_mm2=in_mm2,
                regions=sum(r.regions for r in unit_records),
                images_with_region=sum(1 for r in unit_records if r.area_pixels),
                frames=len(unit_records),
            )
        )
    previews = [
        (
            f"{key[0]}-{key[1]}",
            burn_outline(image, mask, templates.report.overlay_caption, templates.segments.segments[0].display_rgb),
        )
        for key, image, mask in pool.largest("study")
    ]
    if overlays_for_destinations:
        by_sop = {str(ds.SOPInstanceUID): ds for ds in usable}
        for key, image, mask in pool.largest("study"):
            outputs.extend(
                _overlays(
                    by_sop[key[0]], [(key, image, mask)], templates, settings, sc_series, model_version, for_all=False
                )
            )

    classification = None
    if models.classifier is not None and probabilities:
        labels = tuple(
            ClassLabelCode(label.name, label.code_value, label.coding_scheme_designator, label.code_meaning)
            for label in models.classifier.labels
        )
        classification = Classification(labels, np.concatenate(probabilities).mean(axis=0), len(records))
    sr = build_report(
        sources=usable,
        segments=summaries,
        other_evidence=[o.dataset for o in outputs if o.kind == "SC"],
        classification=classification,
        templates=templates,
        algorithm=algorithm,
        series_instance_uid=derive_uid(study_uid, "sr-series", model_version),
        sop_instance_uid=derive_uid(study_uid, "sr", model_version),
        series_number=settings.output.series_number_sr,
        manufacturer=manufacturer,
    )
    outputs.append(OutputObject("SR", sr))
    timer.add("encode", started)

    regions = sum(r.regions for r in records.values())
    summary: dict[str, Any] = {
        "images": len(usable),
        "frames": len(records),
        "frames_with_region": sum(1 for r in records.values() if r.area_pixels),
        "regions": regions,
        "classification": (
            {"class": classification.predicted.name, "probability": round(float(classification.probabilities.max()), 4)}
            if classification is not None
            else "no classifier configured: no classification was made"
        ),
        "outputs": Counter(o.kind for o in outputs),
        "skipped": dict(skipped),
        "notes": notes,
        "timings_ms": {stage: round(ms, 1) for stage, ms in timer.ms.items()},
        "model_version": model_version,
    }
    LOG.info(
        "study processed study_instance_uid=%s images=%d frames=%d regions=%d outputs=%d skipped=%d ms=%s",
        study_uid,
        len(usable),
        len(records),
        regions,
        len(outputs),
        sum(skipped.values()),
        summary["timings_ms"],
    )
    return StudyResult(study_uid, outputs, summary, previews, records)


def _overlays(
    source: Dataset,
    frames: list[tuple[FrameKey, np.ndarray, np.ndarray]],
    templates: Templates,
    settings: Settings,
    series_uid: str,
    model_version: str,
    *,
    for_all: bool,
) -> list[OutputObject]:
    rgb = templates.segments.segments[0].display_rgb
    objects = []
    for number, (key, image, mask) in enumerate(frames, start=1):
        if str(source.SOPInstanceUID) != key[0]:
            continue
        try:
            sc = build_overlay(
                source,
                burn_outline(image, mask, templates.report.overlay_caption, rgb),  # type: ignore[arg-type]
                series_instance_uid=series_uid,
                sop_instance_uid=derive_uid(key[0], str(key[1]), "sc", model_version),
                series_number=settings.output.series_number_sc,
                instance_number=number,
                manufacturer=settings.output.manufacturer,
                series_description=f"{templates.segments.series_description} overlay"[:64],
            )
        except EncodeError as exc:
            LOG.warning("overlay not written for sop_instance_uid=%s: %s", key[0], exc)
            continue
        if int(source.get("NumberOfFrames", 1) or 1) > 1:
            sc.ImageComments = f"NOT FOR DIAGNOSTIC USE; frame {key[1]} of the source"
        objects.append(OutputObject("SC", sc, for_all_destinations=for_all))
    return objects


__all__ = ["SC_SOP_CLASS_UID", "OutputObject", "StudyResult", "process_study", "read_candidates"]
