"""The engine's part of a study: decode each selected image, segment it, enhance it, classify it.

Frames are prepared and run through the models a batch at a time; of each frame only its mask is kept
(bit-packed) with its area and region count, and the classifier's probabilities, so memory stays flat as
studies grow. An instance that cannot be decoded is skipped with its reason and the study carries on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from samie_node.config import Settings
from samie_node.engine.enhance import sam_ie
from samie_node.engine.models import Models
from samie_node.engine.prepare import PreparedFrame, prepare_dataset
from samie_node.engine.selection import Candidate
from samie_node.errors import SamieNodeError
from samie_node.timing import StageTimer

LOG = logging.getLogger("samie_node.engine.infer")

FrameKey = tuple[str, int]  # (SOP Instance UID, 1-based frame number)


@dataclass(frozen=True)
class FrameResult:
    """What the engine found in one source frame: each kept region's mask, bit-packed, and its statistics.

    Attributes
    ----------
    shape
        (rows, columns) of the frame.
    packed_masks
        (regions, bytes) uint8: each region's mask, ``np.packbits`` of the flattened (rows, columns) mask.
    region_areas
        Pixels in each region.
    region_means
        Mean modality value in each region (Hounsfield units on CT); NaN for colour images.
    value_unit
        UCUM unit of ``region_means``; empty for colour images.
    area_pixels
        Pixels covered by any region (the SAM-IE binary mask).
    pixel_spacing
        (row, column) mm, None when the source gives none.
    probabilities
        The classifier's class probabilities for the frame (its enhanced image), None without one.
    """

    sop_instance_uid: str
    frame_number: int
    shape: tuple[int, int]
    packed_masks: np.ndarray
    region_areas: tuple[int, ...]
    region_means: tuple[float, ...]
    value_unit: str
    area_pixels: int
    pixel_spacing: tuple[float, float] | None
    probabilities: tuple[float, ...] | None = None

    @classmethod
    def of(cls, frame: PreparedFrame, masks: np.ndarray, probabilities: np.ndarray | None = None) -> FrameResult:
        """The result for ``frame`` from its kept (regions, rows, columns) bool masks and, with a classifier,
        its class probabilities."""
        rows, columns = frame.image.shape[:2]
        areas = tuple(int(mask.sum()) for mask in masks)
        if frame.values is not None:
            means = tuple(
                float(frame.values[mask].mean()) if area else float("nan")
                for mask, area in zip(masks, areas, strict=True)
            )
        else:
            means = tuple(float("nan") for _ in areas)
        return cls(
            frame.sop_instance_uid,
            frame.frame_number,
            (rows, columns),
            np.packbits(masks.reshape(len(masks), -1), axis=1) if len(masks) else np.zeros((0, 0), np.uint8),
            areas,
            means,
            frame.value_unit,
            int(np.any(masks, axis=0).sum()) if len(masks) else 0,
            frame.pixel_spacing,
            None if probabilities is None else tuple(float(p) for p in probabilities),
        )

    @property
    def key(self) -> FrameKey:
        """(SOP Instance UID, frame number), as SEG and SR reference the frame."""
        return (self.sop_instance_uid, self.frame_number)

    @property
    def regions(self) -> int:
        """How many regions the engine kept in this frame."""
        return len(self.region_areas)

    def region_mask(self, index: int) -> np.ndarray:
        """The (rows, columns) bool mask of region ``index`` (0-based)."""
        rows, columns = self.shape
        return np.unpackbits(self.packed_masks[index], count=rows * columns).reshape(rows, columns).astype(bool)

    def mask(self) -> np.ndarray:
        """The (rows, columns) bool union of the frame's regions (what SAM-IE enhances with)."""
        union = np.zeros(self.shape, bool)
        for index in range(self.regions):
            union |= self.region_mask(index)
        return union


@dataclass
class Inference:
    """The engine's results for one study.

    Attributes
    ----------
    frames
        Per source frame, in processing order.
    probabilities
        (frames, classes) classifier outputs, or None without a classifier.
    usable
        Headers of the images that were decoded and processed.
    skipped
        Instances that could not be used, by reason.
    """

    frames: dict[FrameKey, FrameResult]
    probabilities: np.ndarray | None
    usable: list[Dataset]
    skipped: Counter[str]


def _frames(
    images: Sequence[Candidate], max_pixels: int, skipped: Counter[str], usable: list[Dataset], timer: StageTimer
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


def _run_batch(
    batch: list[PreparedFrame], models: Models, timer: StageTimer
) -> tuple[list[FrameResult], np.ndarray | None]:
    images = [frame.image for frame in batch]
    with timer.stage("segment"):
        mask_sets = models.segmenter.segment(images)
    with timer.stage("enhance"):
        enhanced = [sam_ie(image, masks) for image, masks in zip(images, mask_sets, strict=True)]
    probabilities = None
    if models.classifier is not None:
        with timer.stage("classify"):
            probabilities = models.classifier.predict(images, [e.image for e in enhanced])
    rows = [None] * len(batch) if probabilities is None else list(probabilities)
    results = [
        FrameResult.of(frame, masks.masks, row) for frame, masks, row in zip(batch, mask_sets, rows, strict=True)
    ]
    return results, probabilities


def infer_study(images: Sequence[Candidate], models: Models, settings: Settings, timer: StageTimer) -> Inference:
    """Run the models over every frame of the selected images, ``segmenter.batch_size`` frames at a time."""
    frames: dict[FrameKey, FrameResult] = {}
    probabilities: list[np.ndarray] = []
    usable: list[Dataset] = []
    skipped: Counter[str] = Counter()
    prepared = _frames(images, settings.limits.max_pixels, skipped, usable, timer)
    for batch in _batches(prepared, settings.segmenter.batch_size):
        results, batch_probabilities = _run_batch(batch, models, timer)
        frames.update((result.key, result) for result in results)
        if batch_probabilities is not None:
            probabilities.append(batch_probabilities)
    return Inference(frames, np.concatenate(probabilities) if probabilities else None, usable, skipped)
