"""Where LiteMedSAM's automatic mode puts its box prompts: boxes proposed from the image itself.

LiteMedSAM was trained with box prompts: a point grid keeps nothing, and a box around the whole image
makes it segment the background. So the automatic mode prompts with boxes around regions that the image
itself suggests (thresholds of a smoothed copy at several scales), and keeps the decoded masks that look
like structures.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class BoxProposals:
    """Where LiteMedSAM's automatic mode puts box prompts, and which of the resulting masks it keeps.

    LiteMedSAM segments well from a box that is tight around an object and poorly from a loose one, and
    every decoded box costs decoder time, so a blind tiling is both slow and weak. The proposals here come
    from the image itself instead: the grey image, reduced to ``work_size`` px, is smoothed at each of
    ``smoothing`` scales, split at its Otsu threshold and at grey-level percentiles into bright and dark
    regions, and every connected region of a plausible size gives its bounding box, padded by
    ``padding``. A regular tiling can be added with ``tile_scales`` (box side as a fraction of the image
    side).

    Attributes
    ----------
    smoothing
        Gaussian sigmas as fractions of ``work_size``: the scales of structure that are proposed.
    level_percentiles
        Grey-level percentiles used as thresholds besides Otsu's, so structures inside a large bright
        body (organs in a CT slice) are proposed too.
    work_size
        Long side of the image the proposals are computed on.
    min_region_fraction, max_region_fraction
        Region sizes (fractions of the image) that become proposals.
    padding
        Box margin as a fraction of the image side.
    max_proposals
        The largest distinct regions first, up to this many boxes (tiles come on top).
    tile_scales, tile_overlap
        Optional regular tiling added to the content proposals.
    duplicate_iou
        Proposals overlapping an earlier one by more than this box IoU are not decoded.
    nms_iou
        Box IoU above which the lower-scoring of two kept masks is dropped.
    max_area_fraction
        Masks covering more of the image than this are background and dropped.
    max_border_fraction
        Masks touching more than this fraction of the image's edge pixels are dropped, for the same
        reason.
    """

    smoothing: tuple[float, ...] = (0.03, 0.06)
    level_percentiles: tuple[float, ...] = (25.0, 50.0, 75.0, 90.0, 95.0, 98.0)
    work_size: int = 128
    min_region_fraction: float = 0.002
    max_region_fraction: float = 0.5
    padding: float = 0.03
    max_proposals: int = 16
    tile_scales: tuple[float, ...] = ()
    tile_overlap: float = 0.5
    duplicate_iou: float = 0.9
    nms_iou: float = 0.7
    max_area_fraction: float = 0.5
    max_border_fraction: float = 0.2

    def boxes(self, image: np.ndarray) -> np.ndarray:
        """Return (K, 4) float32 x0, y0, x1, y1 box prompts in pixels of the (H, W, 3) ``image``."""
        height, width = image.shape[:2]
        kept: list[np.ndarray] = []
        for box in self._region_boxes(image):
            if len(kept) == self.max_proposals:
                break
            if all(_box_iou(box, other) <= self.duplicate_iou for other in kept):
                kept.append(box)
        for box in self._tile_boxes(height, width):
            if all(_box_iou(box, other) <= self.duplicate_iou for other in kept):
                kept.append(box)
        return np.asarray(kept, np.float32).reshape(-1, 4)

    def _region_boxes(self, image: np.ndarray) -> list[np.ndarray]:
        height, width = image.shape[:2]
        scale = self.work_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        regions: list[tuple[int, np.ndarray]] = []
        for sigma in self.smoothing:
            blurred = cv2.GaussianBlur(small, (0, 0), sigma * self.work_size)
            low, high = float(blurred.min()), float(blurred.max())
            levels = np.rint((blurred - low) * (255.0 / max(high - low, 1e-6))).astype(np.uint8)
            otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            thresholds = {float(otsu), *(float(t) for t in np.percentile(levels, self.level_percentiles))}
            for threshold in sorted(thresholds):
                for binary in (levels > threshold, levels <= threshold):
                    regions += self._regions_of(binary, scale)
        regions.sort(key=lambda item: -item[0])
        return [box for _, box in regions]

    def _regions_of(self, binary: np.ndarray, scale: float) -> list[tuple[int, np.ndarray]]:
        rows, cols = binary.shape
        _, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
        found = []
        for x, y, w, h, area in stats[1:]:
            fraction = area / (rows * cols)
            edges = int(x == 0) + int(y == 0) + int(x + w == cols) + int(y + h == rows)
            if self.min_region_fraction <= fraction <= self.max_region_fraction and edges < 2:
                pad_x, pad_y = self.padding * cols, self.padding * rows
                box = [max(0.0, x - pad_x), max(0.0, y - pad_y), min(cols, x + w + pad_x), min(rows, y + h + pad_y)]
                found.append((int(area), np.asarray(box, np.float32) / scale))
        return found

    def _tile_boxes(self, height: int, width: int) -> list[np.ndarray]:
        boxes: list[np.ndarray] = []
        for scale in self.tile_scales:
            box_h, box_w = scale * height, scale * width
            for y0 in _tile_starts(height, box_h, self.tile_overlap):
                for x0 in _tile_starts(width, box_w, self.tile_overlap):
                    boxes.append(np.array([x0, y0, min(x0 + box_w, width), min(y0 + box_h, height)], np.float32))
        return boxes


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _tile_starts(length: int, box: float, overlap: float) -> list[float]:
    """Evenly spread starts of boxes of size ``box`` over ``length`` with roughly ``overlap`` shared."""
    if box >= length:
        return [0.0]
    stride = box * (1.0 - overlap)
    count = int(np.ceil((length - box) / stride)) + 1
    return [float(v) for v in np.linspace(0.0, length - box, count)]
