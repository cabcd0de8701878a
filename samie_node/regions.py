"""From the engine's per-frame masks to the regions a radiologist sees: one SEG segment and one SR finding each.

On a single image every kept mask is a region. In a series (a CT or MR stack, one SEG unit) a structure
shows on several slices: a mask joins the region of a mask on the previous frame that it overlaps (by at
least :data:`LINK_OVERLAP` of the smaller of the two), so a lesion seen on five slices is one region with
five frames, not five regions. The largest regions keep their own segment; beyond ``max_segments`` the
rest share one last segment, so nothing found is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from samie_node.engine.infer import FrameKey, FrameResult

#: Overlap (intersection over the smaller mask) above which masks on neighbouring frames are one region.
LINK_OVERLAP = 0.5


@dataclass
class Region:
    """One structure: the masks that show it, per frame (several masks of a frame may belong to it).

    Attributes
    ----------
    members
        Frame key -> indices of that frame's masks (:attr:`FrameResult.packed_masks`) in the region.
    number
        1-based segment number, set once the regions of a unit are ordered.
    merged
        True for the last segment when it holds several smaller regions together.
    """

    members: dict[FrameKey, list[int]] = field(default_factory=dict)
    number: int = 0
    merged: bool = False

    def mask(self, frame: FrameResult) -> np.ndarray:
        """The region's (rows, columns) mask on ``frame`` (empty where it does not show)."""
        union = np.zeros(frame.shape, bool)
        for index in self.members.get(frame.key, []):
            union |= frame.region_mask(index)
        return union


@dataclass(frozen=True)
class RegionStats:
    """What the SR reports of a region."""

    area: float
    area_in_mm2: bool
    mean_value: float | None
    value_unit: str
    images: int
    largest_frame: FrameKey


def link_regions(frames: Sequence[FrameResult], max_segments: int) -> list[Region]:
    """The regions of one SEG unit (``frames`` in the unit's order), largest first, numbered from 1."""
    regions: list[Region] = []
    previous: list[tuple[Region, np.ndarray]] = []
    for frame in frames:
        current: list[tuple[Region, np.ndarray]] = []
        for index in range(frame.regions):
            mask = frame.region_mask(index)
            region = _best_match(mask, previous)
            if region is None:
                region = Region()
                regions.append(region)
            region.members.setdefault(frame.key, []).append(index)
            current.append((region, mask))
        previous = current
    by_frame = {frame.key: frame for frame in frames}
    regions.sort(key=lambda region: -_pixels(region, by_frame))
    if len(regions) > max_segments:
        rest = Region(merged=True)
        for region in regions[max_segments - 1 :]:
            for key, indices in region.members.items():
                rest.members.setdefault(key, []).extend(indices)
        regions = [*regions[: max_segments - 1], rest]
    for number, region in enumerate(regions, start=1):
        region.number = number
    return regions


def _best_match(mask: np.ndarray, previous: list[tuple[Region, np.ndarray]]) -> Region | None:
    best, best_overlap = None, LINK_OVERLAP
    area = int(mask.sum())
    for region, other in previous:
        smaller = min(area, int(other.sum()))
        overlap = int((mask & other).sum()) / smaller if smaller else 0.0
        if overlap >= best_overlap:
            best, best_overlap = region, overlap
    return best


def _pixels(region: Region, frames: dict[FrameKey, FrameResult]) -> int:
    return sum(int(region.mask(frames[key]).sum()) for key in region.members)


def region_stats(region: Region, frames: dict[FrameKey, FrameResult]) -> RegionStats:
    """Area (mm2 when every frame of the region has a pixel spacing), mean modality value, frames."""
    members = [frames[key] for key in region.members]
    in_mm2 = all(frame.pixel_spacing is not None for frame in members)
    area, value_sum, value_pixels, largest = 0.0, 0.0, 0, (0, next(iter(region.members)))
    for frame in members:
        pixels = int(region.mask(frame).sum())
        spacing = frame.pixel_spacing
        area += pixels * (spacing[0] * spacing[1] if spacing is not None and in_mm2 else 1.0)
        largest = max(largest, (pixels, frame.key))
        for index in region.members[frame.key]:
            if not math.isnan(frame.region_means[index]):
                value_sum += frame.region_means[index] * frame.region_areas[index]
                value_pixels += frame.region_areas[index]
    units = {frame.value_unit for frame in members}
    mean = value_sum / value_pixels if value_pixels and len(units) == 1 else None
    return RegionStats(area, in_mm2, mean, units.pop() if mean is not None else "", len(members), largest[1])


#: Fewest points of an outline written to the SR (OHIF offers to edit a 4- or 5-point polyline as a
#: rectangle, which would change it).
MIN_OUTLINE_POINTS = 6


def outline(mask: np.ndarray) -> np.ndarray:
    """The closed outline of the largest connected part of ``mask`` as (column, row) SCOORD points.

    (0, 0) is the top left corner of the top left pixel (PS3.3 C.18.6.1.1), so a pixel's centre is at
    +0.5; the last point repeats the first. Small or straight regions are traced densely enough to give at
    least :data:`MIN_OUTLINE_POINTS` points.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise ValueError("outline of an empty mask")
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    points = largest[:, 0, :].astype(float) + 0.5
    if len(points) < MIN_OUTLINE_POINTS:
        dense, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        points = max(dense, key=len)[:, 0, :].astype(float) + 0.5
    if len(points) < MIN_OUTLINE_POINTS:  # a pixel or two: the edges of their bounding box, walked around
        x, y, width, height = cv2.boundingRect(mask.astype(np.uint8))
        corners = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]], dtype=float)
        points = np.vstack(
            [np.linspace(a, b, 2, endpoint=False) for a, b in zip(corners, np.roll(corners, -1, 0), strict=True)]
        )
    return np.vstack([points, points[:1]])
