"""What a segmenter gives back, in plain numpy: the masks of one image with their scores.

Kept apart from the models so that the enhancement, the pipeline and the encoders can use masks without
importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class MaskSet:
    """The masks found in one image.

    Attributes
    ----------
    masks
        (N, H, W) bool at the image's own resolution.
    predicted_iou
        (N,) float32, the model's estimate of each mask's IoU with the true object.
    stability_score
        (N,) float32, IoU of the mask thresholded at logits -1 and +1: how sharp its border is.
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != np.bool_:
            raise ValueError("masks must be an (N, H, W) bool array")
        count = self.masks.shape[0]
        for name in ("predicted_iou", "stability_score"):
            scores = getattr(self, name)
            if scores.shape != (count,) or scores.dtype != np.float32:
                raise ValueError(f"{name} must be an ({count},) float32 array")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> MaskSet:
        """No masks for an image of ``height`` x ``width``."""
        return cls(
            masks=np.zeros((0, height, width), bool),
            predicted_iou=np.zeros(0, np.float32),
            stability_score=np.zeros(0, np.float32),
        )


class Segmenter(Protocol):
    """What the pipeline, ``enhance`` and ``train`` need from a segmentation model."""

    @property
    def name(self) -> str:
        """The model's name, as SEG and SR name the algorithm."""

    @property
    def version(self) -> str:
        """The model's version."""

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the model's weights."""

    def segment(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> list[MaskSet]:
        """Segment (H, W, 3) uint8 RGB ``images``; ``boxes[i]`` is a (K, 4) x0, y0, x1, y1 array or None;
        ``modalities[i]`` the DICOM Modality of image i (empty: unknown)."""
        ...
