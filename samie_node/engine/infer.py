"""The engine's part of a study: decode each selected image, segment it, enhance it, classify it.

The unit of work is a chunk: a few images of one study, as the encoded bytes the node read from its
spool. :func:`run_chunk` decodes them itself, runs the models a batch at a time and returns per-frame
results; it is the same function in the node's process (local backend) and in a Ray actor, so both
give the same masks for the same input. Of each frame only its mask is kept (bit-packed) with its area
and region count, and the classifier's probabilities, so memory stays flat as studies grow. An instance
that cannot be decoded is skipped with its reason and the study carries on. :func:`assemble` puts a
study's chunk results back together in the order of its images.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from samie_node.config import Settings
from samie_node.engine.enhance import sam_ie
from samie_node.engine.models import Models
from samie_node.engine.prepare import PreparedFrame, Windowing, prepare_dataset
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


#: A box prompt on one frame: (1-based frame number, (x0, y0, x1, y1) in image pixels).
FramePrompt = tuple[int, tuple[float, float, float, float]]


@dataclass(frozen=True)
class SourceImage:
    """One instance of a chunk as the engine receives it: its SOP Instance UID and its encoded file.

    ``prompts`` makes it a prompted image (the boxes a radiologist drew): only the frames named there are
    segmented, each with its boxes, one region per box in the order given, unfiltered; nothing is
    enhanced or classified. Empty: the automatic path over every frame.
    """

    sop_instance_uid: str
    data: bytes
    prompts: tuple[FramePrompt, ...] = ()


@dataclass
class ChunkResult:
    """What the engine returns for one chunk (pickled when it comes back from a Ray actor).

    Attributes
    ----------
    frames
        Per decoded frame, in the chunk's order.
    probabilities
        (frames, classes), or None without a classifier.
    skipped
        SOP Instance UID -> why it could not be used; the chunk's other images were used.
    timings_ms
        Time per stage (prepare, segment, enhance, classify) spent on the chunk.
    worker
        Who ran it (``local``, or the Ray node and process), for the log.
    """

    frames: list[FrameResult]
    probabilities: np.ndarray | None
    skipped: dict[str, str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = "local"


def _frames(
    images: Sequence[SourceImage], settings: Settings, skipped: dict[str, str], timer: StageTimer
) -> Iterator[PreparedFrame]:
    # MedSAM sees CT and MR through the windows it was trained with (prepare.medsam_window); the SAM-IE
    # fusion and the classifier see the same frame, so mask and image stay one picture.
    windowing: Windowing = "medsam" if settings.segmenter.kind == "medsam" else "display"
    for image in images:
        started = time.perf_counter()
        prompted = {frame for frame, _ in image.prompts}
        try:
            frames = prepare_dataset(
                pydicom.dcmread(io.BytesIO(image.data)), max_pixels=settings.limits.max_pixels, windowing=windowing
            )
        except SamieNodeError as exc:
            skipped[image.sop_instance_uid] = str(exc)[:120]
            LOG.warning("instance skipped sop_instance_uid=%s: %s", image.sop_instance_uid, exc)
            continue
        except Exception as exc:  # decoders raise many types; one bad instance must not stop the study
            skipped[image.sop_instance_uid] = f"cannot decode ({type(exc).__name__})"
            LOG.warning("instance skipped sop_instance_uid=%s: %s", image.sop_instance_uid, type(exc).__name__)
            continue
        finally:
            timer.add("prepare", started)
        yield from (frame for frame in frames if not prompted or frame.frame_number in prompted)


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
        mask_sets = models.segmenter.segment(images, modalities=[frame.modality for frame in batch])
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


def _run_prompted(
    batch: list[PreparedFrame], prompts: dict[FrameKey, np.ndarray], models: Models, timer: StageTimer
) -> list[FrameResult]:
    """Box prompts only: one mask per box, as drawn; no enhancement, no classification."""
    with timer.stage("segment"):
        mask_sets = models.segmenter.segment(
            [frame.image for frame in batch], [prompts[(frame.sop_instance_uid, frame.frame_number)] for frame in batch]
        )
    return [FrameResult.of(frame, masks.masks) for frame, masks in zip(batch, mask_sets, strict=True)]


def _frame_prompts(images: Sequence[SourceImage]) -> dict[FrameKey, np.ndarray]:
    """Each prompted frame's (K, 4) boxes, in the order given."""
    boxes: dict[FrameKey, list[tuple[float, float, float, float]]] = {}
    for image in images:
        for frame, box in image.prompts:
            boxes.setdefault((image.sop_instance_uid, frame), []).append(box)
    return {key: np.asarray(value, np.float32).reshape(-1, 4) for key, value in boxes.items()}


def run_chunk(images: Sequence[SourceImage], models: Models, settings: Settings) -> ChunkResult:
    """Decode a chunk's images and run the models over their frames, ``segmenter.batch_size`` at a time
    (prompted images: only their prompted frames, with their boxes)."""
    timer = StageTimer()
    frames: list[FrameResult] = []
    probabilities: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    prompts = _frame_prompts(images)
    prepared = _frames(images, settings, skipped, timer)
    for batch in _batches(prepared, settings.segmenter.batch_size):
        prompted = [frame for frame in batch if (frame.sop_instance_uid, frame.frame_number) in prompts]
        if prompted:
            frames.extend(_run_prompted(prompted, prompts, models, timer))
        automatic = [frame for frame in batch if (frame.sop_instance_uid, frame.frame_number) not in prompts]
        if not automatic:
            continue
        results, batch_probabilities = _run_batch(automatic, models, timer)
        frames.extend(results)
        if batch_probabilities is not None:
            probabilities.append(batch_probabilities)
    return ChunkResult(frames, np.concatenate(probabilities) if probabilities else None, skipped, timer.ms)


def cut_chunks(images: Sequence[Candidate], size: int) -> list[list[Candidate]]:
    """A study's images in chunks of ``size``, in order: the units the scheduler hands to the engine."""
    return [list(images[start : start + size]) for start in range(0, len(images), size)]


def assemble(images: Sequence[Candidate], results: Sequence[ChunkResult], timer: StageTimer) -> Inference:
    """A study's :class:`Inference` from its chunks' results, given in the order of its chunks."""
    frames: dict[FrameKey, FrameResult] = {}
    probabilities = [r.probabilities for r in results if r.probabilities is not None]
    skipped_uids: dict[str, str] = {}
    for result in results:
        frames.update((frame.key, frame) for frame in result.frames)
        skipped_uids.update(result.skipped)
        for stage, ms in result.timings_ms.items():
            timer.ms[stage] = timer.ms.get(stage, 0.0) + ms
    usable = [c.header for c in images if str(c.header.SOPInstanceUID) not in skipped_uids]
    return Inference(
        frames,
        np.concatenate(probabilities) if probabilities else None,
        usable,
        Counter(skipped_uids.values()),
    )
