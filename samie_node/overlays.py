"""Pictures of what the model found: PNG previews for people and Secondary Capture overlays for PACS.

The frames with the largest regions are chosen from the engine's results and decoded again (the engine
keeps only masks, not pixels); each gets the outline of its mask burned in. Previews go to the outbox
beside the study's results; overlays are DICOM objects for destinations that cannot show SEG and for
images a SEG cannot reference (multi-frame images without a Frame of Reference).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from samie_node.encode.sc import build_overlay, burn_outline
from samie_node.encode.templates import Templates
from samie_node.engine.infer import FrameKey, FrameResult
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.selection import Candidate
from samie_node.errors import EncodeError, SamieNodeError
from samie_node.uids import derive_uid

LOG = logging.getLogger("samie_node.overlays")


def largest_frames(frames: Iterable[FrameResult], count: int) -> list[FrameResult]:
    """The ``count`` frames with the largest regions (none without a region), largest first."""
    with_region = [frame for frame in frames if frame.area_pixels]
    return sorted(with_region, key=lambda frame: (-frame.area_pixels, frame.key))[:count]


def frame_images(
    frames: Sequence[FrameResult], images: Sequence[Candidate], max_pixels: int
) -> dict[FrameKey, np.ndarray]:
    """Decode the source frames of ``frames`` again, as the engine saw them."""
    paths = {str(candidate.header.SOPInstanceUID): candidate.path for candidate in images}
    wanted: dict[str, set[int]] = {}
    for frame in frames:
        wanted.setdefault(frame.sop_instance_uid, set()).add(frame.frame_number)
    decoded: dict[FrameKey, np.ndarray] = {}
    for sop_instance_uid, numbers in wanted.items():
        try:
            prepared = prepare_dataset(pydicom.dcmread(paths[sop_instance_uid]), max_pixels=max_pixels)
        except (SamieNodeError, OSError, KeyError) as exc:  # it decoded a moment ago; say so and go on
            LOG.warning("overlay image unavailable sop_instance_uid=%s: %s", sop_instance_uid, exc)
            continue
        decoded.update(((p.sop_instance_uid, p.frame_number), p.image) for p in prepared if p.frame_number in numbers)
    return decoded


@dataclass
class OverlaySeries:
    """The study's Secondary Capture overlay series: numbers its instances one after another."""

    templates: Templates
    series_instance_uid: str
    series_number: int
    manufacturer: str
    model_version: str
    written: list[Dataset] = field(default_factory=list)

    def picture(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The image with the mask's outline and the not-for-diagnosis caption burned in."""
        rgb = self.templates.segments.colour(1)
        return burn_outline(image, mask, self.templates.report.overlay_caption, rgb)

    def add(self, source: Dataset, frame: FrameResult, image: np.ndarray) -> Dataset | None:
        """Build the overlay of one frame of ``source``; None (logged) when highdicom refuses it."""
        try:
            sc = build_overlay(
                source,
                self.picture(image, frame.mask()),
                series_instance_uid=self.series_instance_uid,
                sop_instance_uid=derive_uid(frame.sop_instance_uid, str(frame.frame_number), "sc", self.model_version),
                series_number=self.series_number,
                instance_number=len(self.written) + 1,
                manufacturer=self.manufacturer,
                series_description=f"{self.templates.segments.series_description} overlay"[:64],
            )
        except EncodeError as exc:
            LOG.warning("overlay not written for sop_instance_uid=%s: %s", frame.sop_instance_uid, exc)
            return None
        if int(source.get("NumberOfFrames", 1) or 1) > 1:
            sc.ImageComments = f"NOT FOR DIAGNOSTIC USE; frame {frame.frame_number} of the source"
        self.written.append(sc)
        return sc
