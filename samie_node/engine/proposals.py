"""Where LiteMedSAM's automatic mode puts its box prompts: regions the image itself suggests.

LiteMedSAM was trained with box prompts: a point grid keeps nothing, and a box around the whole image
makes it segment the background. So the automatic mode prompts with boxes around regions of the image:
every map of :func:`samie_node.engine.structures.image_maps` (luma, Lab a*/b* for colour images, a
local-contrast copy), smoothed at three scales, is cut at Otsu's threshold and at grey-level percentiles
of the foreground, bright side and dark side. Each connected region of a plausible size that does not
span the image gets a quick contrast against a rectangle around it (integral images); the best distinct
ones get the full structure features, must pass the candidate gate, and the best ``max_candidates`` of
those are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from samie_node.engine.structures import Maps, passes, structure_features, structure_score
from samie_node.profiles import StructureProfile

#: Gaussian sigmas (px at work size) at which regions are proposed.
SMOOTHING = (2.0, 4.0, 8.0)
#: Grey-level percentiles of the foreground used as thresholds besides Otsu's, so structures inside a large
#: bright body (organs in a CT slice) are proposed too.
PERCENTILES = (3.0, 8.0, 15.0, 30.0, 50.0, 70.0, 85.0, 92.0, 97.0)
#: Boxes decoded per image, and the box IoU above which two proposals count as one.
MAX_CANDIDATES = 10
CANDIDATE_NMS = 0.6


@dataclass(frozen=True)
class Candidate:
    """A proposed box (image pixels), its structure score, and the map that proposed it."""

    box: np.ndarray
    score: float
    source: str


@dataclass(frozen=True)
class _Quick:
    contrast: float
    box: np.ndarray  # work pixels
    channel: int
    sigma: float
    threshold: float
    bright: bool


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x0, y0, x1, y1 boxes."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _rect_sums(integral: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Sums over rectangles [y0, y1) x [x0, x1) from an integral image, one per element."""
    result: np.ndarray = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return result


def _thresholds(values: np.ndarray) -> list[float]:
    low, high = float(values.min()), float(values.max())
    levels = np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(levels.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return sorted({low + otsu * (high - low) / 255.0, *np.percentile(values, PERCENTILES).tolist()})


class _RegionScan:
    """Quick contrasts of every thresholded region of one blurred map (integral images, no masks kept)."""

    def __init__(self, blurred: np.ndarray, maps: Maps, profile: StructureProfile, sigma: float) -> None:
        self.foreground = maps.foreground
        rows, cols = maps.shape
        self.shape = (rows, cols)
        masked = np.where(self.foreground, blurred, 0.0).astype(np.float64)
        self.s1 = cv2.integral(masked)
        self.s2 = cv2.integral(masked * masked)
        self.fg_integral = cv2.integral(self.foreground.astype(np.float64))
        # float64 once: bincount would convert its weights on every call (the same values, exactly).
        self.values = blurred.ravel().astype(np.float64)
        self.squares = (blurred * blurred).ravel().astype(np.float64)
        self.min_area = max(profile.min_area_fraction * rows * cols, np.pi * (1.5 * sigma) ** 2)
        self.max_area = profile.max_area_fraction * max(1, int(self.foreground.sum()))

    def regions(self, binary: np.ndarray) -> list[tuple[float, np.ndarray, int]]:
        """(quick contrast, work-pixel box, area) of each plausible connected region of ``binary``.

        The per-region arithmetic is done on arrays of all plausible regions at once, with the same float64
        operations in the same order as one region at a time, so every contrast is the same number (squares
        through ``float_power``, which rounds like a scalar's ``** 2``; an array's ``** 2`` multiplies, which
        differs in the last bit now and then).
        """
        rows, cols = self.shape
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8, copy=False), connectivity=8)
        x, y, w, h, area = stats[1:count].T
        plausible = (self.min_area <= area) & (area <= self.max_area) & ~((x == 0) & (w == cols))
        plausible &= ~((y == 0) & (h == rows))
        if not plausible.any():
            return []
        chosen = 1 + np.flatnonzero(plausible)
        x, y, w, h, area = (column.astype(np.int64) for column in stats[chosen].T)
        # Only the rows the plausible regions span: each region's pixels are summed in the same order.
        span = slice(int(y.min()) * cols, int((y + h).max()) * cols)
        flat = labels.ravel()[span].astype(np.intp)
        sums = np.bincount(flat, weights=self.values[span], minlength=count)[chosen]
        squares = np.bincount(flat, weights=self.squares[span], minlength=count)[chosen]
        pad = np.clip(0.4 * np.sqrt(area / np.pi), 3, 24).astype(np.int64)
        rx0, ry0 = np.maximum(0, x - pad), np.maximum(0, y - pad)
        rx1, ry1 = np.minimum(cols, x + w + pad), np.minimum(rows, y + h + pad)
        n_ring = _rect_sums(self.fg_integral, rx0, ry0, rx1, ry1) - area
        ring = n_ring >= 8
        if not ring.any():
            return []
        n_ring, sums, squares, area = n_ring[ring], sums[ring], squares[ring], area[ring]
        rx0, ry0, rx1, ry1 = rx0[ring], ry0[ring], rx1[ring], ry1[ring]
        mean_in = sums / area
        mean_ring = (_rect_sums(self.s1, rx0, ry0, rx1, ry1) - sums) / n_ring
        var_in = np.maximum(squares / area - np.float_power(mean_in, 2), 0.0)
        var_ring = np.maximum(
            (_rect_sums(self.s2, rx0, ry0, rx1, ry1) - squares) / n_ring - np.float_power(mean_ring, 2), 0.0
        )
        contrast = np.abs(mean_in - mean_ring) / (np.sqrt(0.5 * (var_in + var_ring)) + 0.5)
        boxes = np.stack([x, y, x + w, y + h], axis=1)[ring].astype(np.float32)
        return list(zip(contrast.tolist(), boxes, area.tolist(), strict=True))


def _quick_regions(maps: Maps, profile: StructureProfile, blurs: dict[tuple[int, float], np.ndarray]) -> list[_Quick]:
    """Every thresholded region with its quick contrast, best first; ``blurs`` gets each blurred map."""
    quick: list[_Quick] = []
    seen: set[tuple[int, ...]] = set()
    for index, channel in enumerate(maps.channels):
        for sigma in SMOOTHING:
            blurred = blurs[index, sigma] = cv2.GaussianBlur(channel, (0, 0), sigma)
            values = blurred[maps.foreground]
            if values.size < 16 or float(values.max() - values.min()) < 1e-3:
                continue
            scan = _RegionScan(blurred, maps, profile, sigma)
            for threshold in _thresholds(values):
                for bright in (True, False):
                    binary = (blurred > threshold if bright else blurred <= threshold) & maps.foreground
                    for contrast, box, area in scan.regions(binary):
                        key = (*(int(v) // 3 for v in box), area // 32)
                        if key not in seen:
                            seen.add(key)
                            quick.append(_Quick(contrast, box, index, sigma, threshold, bright))
    quick.sort(key=lambda item: -item.contrast)
    return quick


def _region_of(item: _Quick, maps: Maps, blurred: np.ndarray) -> np.ndarray | None:
    """The largest region of ``item``'s threshold (on its ``blurred`` map) inside its box, as a work-size mask."""
    x0, y0, x1, y1 = (int(v) for v in item.box)
    window = blurred[y0:y1, x0:x1]
    binary = (window > item.threshold) if item.bright else (window <= item.threshold)
    binary &= maps.foreground[y0:y1, x0:x1]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    region = np.zeros(maps.shape, bool)
    region[y0:y1, x0:x1] = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return region


def propose(maps: Maps, profile: StructureProfile) -> list[Candidate]:
    """The best distinct regions of the image, as boxes in image pixels, best first (see the module notes)."""
    shortlist: list[_Quick] = []
    blurs: dict[tuple[int, float], np.ndarray] = {}
    for item in _quick_regions(maps, profile, blurs):
        if all(box_iou(item.box, other.box) <= 0.85 for other in shortlist):
            shortlist.append(item)
        if len(shortlist) >= 4 * MAX_CANDIDATES:
            break
    candidates: list[Candidate] = []
    for item in shortlist:
        region = _region_of(item, maps, blurs[item.channel, item.sigma])
        features = structure_features(region, maps) if region is not None else None
        if features is not None and passes(features, profile, candidate=True):
            source = f"{maps.names[item.channel]}{item.sigma:g}{'b' if item.bright else 'd'}"
            candidates.append(Candidate(item.box / maps.scale, structure_score(features), source))
    candidates.sort(key=lambda c: -c.score)
    chosen: list[Candidate] = []
    for candidate in candidates:
        if all(box_iou(candidate.box, other.box) <= CANDIDATE_NMS for other in chosen):
            chosen.append(candidate)
        if len(chosen) == MAX_CANDIDATES:
            break
    return chosen


def grow(boxes: np.ndarray, fraction: float, height: int, width: int, minimum: float = 2.0) -> np.ndarray:
    """(K, 4) boxes grown by ``fraction`` of their size plus ``minimum`` px per side, clipped to the image."""
    grown = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    w = grown[:, 2] - grown[:, 0]
    h = grown[:, 3] - grown[:, 1]
    grown[:, 0] -= fraction * w + minimum
    grown[:, 2] += fraction * w + minimum
    grown[:, 1] -= fraction * h + minimum
    grown[:, 3] += fraction * h + minimum
    grown[:, [0, 2]] = grown[:, [0, 2]].clip(0, width)
    grown[:, [1, 3]] = grown[:, [1, 3]].clip(0, height)
    return grown


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a bool mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    largest: np.ndarray = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return largest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole filled (its outer contours, filled)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def tight_box(mask: np.ndarray) -> np.ndarray | None:
    """The bounding box of a bool mask (x0, y0, x1, y1, exclusive ends), None when it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
