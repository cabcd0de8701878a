"""Drawn shapes to box prompts: the geometry of SCOORD and presentation-state graphics, in plain numpy.

Coordinates are image coordinates (column, row) with (0, 0) at the top left corner of the top left
pixel, as PS3.3 defines them for SCOORD (C.18.6.1.2) and for PIXEL annotation units (C.10.5.1.2): a pixel's
centre is at (c + 0.5, r + 0.5), and a box around pixels c0..c1, r0..r1 is (c0, r0, c1 + 1, r1 + 1), the
convention the segmenters take.
"""

from __future__ import annotations

import numpy as np

from samie_node.errors import AnnotationError

Box = tuple[float, float, float, float]

#: Outlines: the box of their points. POLYGON is SCOORD3D's closed outline, INTERPOLATED a presentation
#: state's smooth curve through its points (the curve stays close to the points' box).
_OUTLINES = frozenset({"POLYLINE", "POLYGON", "INTERPOLATED"})


def _checked_box(x0: float, y0: float, x1: float, y1: float) -> Box:
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError("the shape has no area")
    return (float(x0), float(y0), float(x1), float(y1))


def _outline_box(points: np.ndarray) -> Box:
    distinct = len(np.unique(points, axis=0))
    x, y = points[:, 0], points[:, 1]
    if distinct < 3 or abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))) < 1e-9:
        raise AnnotationError(f"the outline has no area (its {distinct} distinct point(s) lie on one line)")
    return _checked_box(x.min(), y.min(), x.max(), y.max())


def _ellipse_box(points: np.ndarray) -> Box:
    """An ELLIPSE is the end points of its major axis, then of its minor axis (PS3.3 C.18.6.1.2)."""
    if len(points) != 4:
        raise AnnotationError(f"an ELLIPSE has 4 points, this one {len(points)}")
    major, minor = points[1] - points[0], points[3] - points[2]
    semi_major, semi_minor = float(np.hypot(*major)) / 2.0, float(np.hypot(*minor)) / 2.0
    if semi_major == 0.0 or semi_minor == 0.0:
        raise AnnotationError("the ellipse has no area")
    centre = (points[0] + points[1]) / 2.0
    cosine, sine = major / (2.0 * semi_major)
    half_width = float(np.hypot(semi_major * cosine, semi_minor * sine))
    half_height = float(np.hypot(semi_major * sine, semi_minor * cosine))
    return _checked_box(
        centre[0] - half_width, centre[1] - half_height, centre[0] + half_width, centre[1] + half_height
    )


def _circle_box(points: np.ndarray) -> Box:
    """A CIRCLE is its centre, then a point on it."""
    if len(points) != 2:
        raise AnnotationError(f"a CIRCLE has 2 points, this one {len(points)}")
    radius = float(np.hypot(*(points[1] - points[0])))
    x, y = points[0]
    return _checked_box(x - radius, y - radius, x + radius, y + radius)


def box_of_shape(graphic_type: str, points: np.ndarray) -> Box:
    """The box (x0, y0, x1, y1) around a drawn 2-D shape.

    Parameters
    ----------
    graphic_type
        POLYLINE, POLYGON or INTERPOLATED (an outline: a rectangle is a POLYLINE of 5 points), ELLIPSE
        (4 points: major then minor axis), CIRCLE (2 points: centre, then a point on the circle).
    points
        (N, 2) column, row.

    Raises
    ------
    AnnotationError
        If the shape is a point or a line (POINT, MULTIPOINT, a 2-point POLYLINE), has no area, has the
        wrong number of points, or is not finite.
    """
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise AnnotationError("the shape has no 2-D points")
    if not np.isfinite(points).all():
        raise AnnotationError("its coordinates are not finite numbers")
    if graphic_type in _OUTLINES:
        return _outline_box(points)
    if graphic_type == "ELLIPSE":
        return _ellipse_box(points)
    if graphic_type == "CIRCLE":
        return _circle_box(points)
    if graphic_type in ("POINT", "MULTIPOINT"):
        raise AnnotationError(f"a {graphic_type} marks points, not a region")
    raise AnnotationError(f"graphic type {graphic_type or '(none)'} is not a region the node segments")


def display_to_pixels(points: np.ndarray, displayed_area: Box) -> np.ndarray:
    """DISPLAY annotation units (0..1 across the displayed area) to image coordinates.

    ``displayed_area`` is the area's (x0, y0, x1, y1) in image coordinates; the display must be neither
    rotated nor flipped (the caller checks).
    """
    x0, y0, x1, y1 = displayed_area
    pixels: np.ndarray = np.asarray(points, np.float64) * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
    return pixels
