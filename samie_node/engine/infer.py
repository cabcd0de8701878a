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

import cv2
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
    """What the engine found in one source frame."""

    sop_instance_uid: str
    frame_number: int
    shape: tuple[int, int]
    packed_mask: np.ndarray
    regions: int
    area_pixels: int
    pixel_spacing: tuple[float, float] | None

    @property
    def key(self) -> FrameKey:
        """(SOP Instance UID, frame number), as SEG and SR reference the frame."""
        return (self.sop_instance_uid, self.frame_number)

    def mask(self) -> np.ndarray:
        """The (rows, columns) bool union of the frame's regions."""
        rows, columns = self.shape
        return np.unpackbits(self.packed_mask, count=rows * columns).reshape(rows, columns).astype(bool)


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


def count_regions(mask: np.ndarray) -> int:
    """Connected regions (8-connected) of a boolean mask."""
    if not mask.any():
        return 0
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(count) - 1


def _frames(
    images: Sequence[Candidate], settings: Settings, skipped: Counter[str], usable: list[Dataset], timer: StageTimer
) -> Iterator[PreparedFrame]:
    # MedSAM sees CT and MR through the windows it was trained with (prepare.medsam_window); the SAM-IE
    # fusion and the classifier see the same frame, so mask and image stay one picture.
    windowing: Windowing = "medsam" if settings.segmenter.kind == "medsam" else "display"
    for candidate in images:
        started = time.perf_counter()
        try:
            frames = prepare_dataset(
                pydicom.dcmread(candidate.path), max_pixels=settings.limits.max_pixels, windowing=windowing
            )
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
    results = []
    for frame, result in zip(batch, enhanced, strict=True):
        mask = result.binary_mask
        results.append(
            FrameResult(
                frame.sop_instance_uid,
                frame.frame_number,
                (int(mask.shape[0]), int(mask.shape[1])),
                np.packbits(mask, axis=None),
                count_regions(mask),
                int(mask.sum()),
                frame.pixel_spacing,
            )
        )
    return results, probabilities


def infer_study(images: Sequence[Candidate], models: Models, settings: Settings, timer: StageTimer) -> Inference:
    """Run the models over every frame of the selected images, ``segmenter.batch_size`` frames at a time."""
    frames: dict[FrameKey, FrameResult] = {}
    probabilities: list[np.ndarray] = []
    usable: list[Dataset] = []
    skipped: Counter[str] = Counter()
    prepared = _frames(images, settings, skipped, usable, timer)
    for batch in _batches(prepared, settings.segmenter.batch_size):
        results, batch_probabilities = _run_batch(batch, models, timer)
        frames.update((result.key, result) for result in results)
        if batch_probabilities is not None:
            probabilities.append(batch_probabilities)
    return Inference(frames, np.concatenate(probabilities) if probabilities else None, usable, skipped)
