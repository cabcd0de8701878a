"""Box prompts checked against the images they name: frames resolved, boxes clipped, 3-D regions placed.

:mod:`samie_node.annotations` reads what was drawn without the images; an annotation usually arrives after
its images, and may name one the node does not have. This module takes the images' headers
(:class:`ImageGeometry`, from the node's copies) and:

- gives every prompt a frame: the one it names, or every frame when it names none (PS3.3: a reference
  without frame numbers applies to all frames; a single-frame image has frame 1);
- clips a box that reaches outside the image, and skips one that lies wholly outside, is narrower or
  lower than a pixel inside it, or names a frame the image does not have;
- sets aside the prompts whose image the node does not have, for the caller to fetch or report;
- places a SCOORD3D region on the image plane it lies in (within half the slice thickness, else 1 mm),
  through Image Position and Orientation (Patient) and Pixel Spacing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from samie_node.annotation_geometry import box_of_shape
from samie_node.annotations import BoxPrompt, SkippedRegion, VolumeRegion
from samie_node.engine.prepare import functional_group_item, pixel_spacing
from samie_node.errors import AnnotationError

#: How far a SCOORD3D point may lie off an image plane (mm) when the image gives no slice thickness.
DEFAULT_PLANE_TOLERANCE_MM = 1.0


@dataclass(frozen=True)
class Plane:
    """Where one frame lies in patient space (mm)."""

    origin: np.ndarray  # (3,) centre of the top left pixel
    row_direction: np.ndarray  # (3,) unit vector along a row (increasing column)
    column_direction: np.ndarray  # (3,) unit vector along a column (increasing row)
    spacing: tuple[float, float]  # (between rows, between columns)
    tolerance_mm: float


@dataclass(frozen=True)
class ImageGeometry:
    """What fitting needs of an image: its size, frames and, where given, each frame's plane."""

    sop_instance_uid: str
    rows: int
    columns: int
    number_of_frames: int
    frame_of_reference_uid: str = ""
    planes: tuple[Plane | None, ...] = field(default=(), compare=False)


@dataclass
class FittedPrompts:
    """Prompts ready for the segmenter, those whose image is missing, and those skipped."""

    prompts: list[BoxPrompt] = field(default_factory=list)
    missing: list[BoxPrompt] = field(default_factory=list)
    skipped: list[SkippedRegion] = field(default_factory=list)


def _vector(value: object, size: int) -> np.ndarray | None:
    try:
        vector = np.asarray([float(v) for v in value], np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (size,) and np.isfinite(vector).all() else None


def _plane(dataset: Dataset, index: int) -> Plane | None:
    position_item = functional_group_item(dataset, index, "PlanePositionSequence")
    orientation_item = functional_group_item(dataset, index, "PlaneOrientationSequence")
    position = _vector((position_item or dataset).get("ImagePositionPatient"), 3)
    orientation = _vector((orientation_item or dataset).get("ImageOrientationPatient"), 6)
    spacing = pixel_spacing(dataset, index)
    if position is None or orientation is None or spacing is None:
        return None
    row_direction, column_direction = orientation[:3], orientation[3:]
    if not np.isclose(np.linalg.norm(row_direction), 1.0, atol=1e-3) or not np.isclose(
        np.linalg.norm(column_direction), 1.0, atol=1e-3
    ):
        return None
    measures = functional_group_item(dataset, index, "PixelMeasuresSequence")
    thickness = _vector([(measures or dataset).get("SliceThickness", dataset.get("SliceThickness"))], 1)
    tolerance = float(thickness[0]) / 2.0 if thickness is not None and thickness[0] > 0 else DEFAULT_PLANE_TOLERANCE_MM
    return Plane(position, row_direction, column_direction, spacing, tolerance)


def image_geometry(dataset: Dataset) -> ImageGeometry:
    """The geometry of an image from its header (no pixel data needed).

    Raises
    ------
    AnnotationError
        If the header has no usable size.
    """
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        sop_instance_uid = str(dataset.SOPInstanceUID)
    except (AttributeError, TypeError, ValueError) as exc:
        raise AnnotationError("the image has no usable Rows, Columns, Number of Frames or SOP Instance UID") from exc
    if min(rows, columns, frames) < 1:
        raise AnnotationError("the image declares a non-positive size")
    return ImageGeometry(
        sop_instance_uid,
        rows,
        columns,
        frames,
        str(dataset.get("FrameOfReferenceUID", "") or ""),
        tuple(_plane(dataset, index) for index in range(frames)),
    )


def _fit_one(prompt: BoxPrompt, image: ImageGeometry) -> list[BoxPrompt]:
    """The prompt on each frame it applies to, its box clipped to the image."""
    if prompt.frame_number is not None and prompt.frame_number > image.number_of_frames:
        raise AnnotationError(f"it names frame {prompt.frame_number} of an image with {image.number_of_frames}")
    x0, y0, x1, y1 = prompt.box
    if x1 <= 0 or y1 <= 0 or x0 >= image.columns or y0 >= image.rows:
        raise AnnotationError(f"its box lies outside the {image.columns} x {image.rows} image")
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(image.columns)), min(y1, float(image.rows)))
    if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
        raise AnnotationError("its box is narrower or lower than a pixel inside the image")
    frames = [prompt.frame_number] if prompt.frame_number is not None else range(1, image.number_of_frames + 1)
    return [dataclasses.replace(prompt, frame_number=frame, box=clipped) for frame in frames]


def fit(prompts: Iterable[BoxPrompt], images: Mapping[str, ImageGeometry]) -> FittedPrompts:
    """Check prompts against the images the node has (by SOP Instance UID); see the module notes."""
    result = FittedPrompts()
    for prompt in prompts:
        image = images.get(prompt.sop_instance_uid)
        if image is None:
            result.missing.append(prompt)
            continue
        try:
            result.prompts.extend(_fit_one(prompt, image))
        except AnnotationError as exc:
            where = f"region on image {prompt.sop_instance_uid}"
            result.skipped.append(SkippedRegion(prompt.annotation_sop_instance_uid, where, str(exc)))
    return result


def _in_plane(points: np.ndarray, plane: Plane) -> tuple[float, np.ndarray]:
    """(largest distance off the plane in mm, (N, 2) image coordinates of the points)."""
    offsets = points - plane.origin
    normal = np.cross(plane.row_direction, plane.column_direction)
    distance = float(np.abs(offsets @ normal).max())
    columns = offsets @ plane.row_direction / plane.spacing[1] + 0.5
    rows = offsets @ plane.column_direction / plane.spacing[0] + 0.5
    return distance, np.stack([columns, rows], axis=1)


def locate(region: VolumeRegion, images: Sequence[ImageGeometry]) -> BoxPrompt:
    """Place a SCOORD3D region on the frame whose plane it lies in.

    Raises
    ------
    AnnotationError
        If it is a volume (ELLIPSOID) or a point, or no frame of an image in its frame of reference holds
        it within that frame's tolerance.
    """
    if region.graphic_type == "ELLIPSOID":
        raise AnnotationError("an ELLIPSOID is a volume; only planar regions are segmented")
    best: tuple[float, ImageGeometry, int, np.ndarray] | None = None
    for image in images:
        if image.frame_of_reference_uid != region.frame_of_reference_uid:
            continue
        for index, plane in enumerate(image.planes):
            if plane is None:
                continue
            distance, pixels = _in_plane(region.points, plane)
            if distance <= plane.tolerance_mm and (best is None or distance < best[0]):
                best = (distance, image, index + 1, pixels)
    if best is None:
        raise AnnotationError("its 3-D region lies in the plane of no image the node has in its frame of reference")
    _, image, frame_number, pixels = best
    return BoxPrompt(
        image.sop_instance_uid,
        frame_number,
        box_of_shape(region.graphic_type, pixels),
        region.label,
        region.annotation_sop_instance_uid,
        region.tracking_uid,
        region.graphic_type,
    )
