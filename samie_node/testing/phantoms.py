"""Seeded phantoms of five kinds of image, each with ground-truth masks of its lesions.

Nothing here is a medical image. The phantoms imitate what makes automatic region finding hard on each
kind of picture: speckle and tissue layers (ultrasound), skin texture, uneven lighting and hair
(dermoscopy photographs), a circular field of view, vessels and a faint macula (fundus photographs), a body
outline, fat layer and CT table (CT), a skull ring, bias field and Rician background noise (MR).

Every generator takes an explicit :class:`numpy.random.Generator` and returns a :class:`Phantom`: the
(H, W, 3) uint8 RGB image, a list of per-lesion (H, W) bool masks (empty for a lesion-free image) and the
kind. Pure numpy and OpenCV.

Kinds and what counts as a lesion
---------------------------------
``us_mass``       breast-ultrasound-like: hypoechoic (usual) or hyperechoic masses, round, lobulated or
                  irregular, optional posterior shadowing or enhancement (not part of the lesion).
``skin_lesion``   RGB skin with texture and lighting; brown to dark pigmented irregular lesion(s) with a
                  soft border and internal variegation; dark hair strands drawn over everything (the
                  lesion mask is the pigmented area, hair included where it crosses).
``fundus``        RGB dark-red disc-shaped field of view on black, vessel tree, faint macula; the lesion
                  is the bright yellowish optic disc (0 or 1 per image).
``ct_structure``  windowed CT-like slice: air, body ellipse with subcutaneous fat, soft tissue, a CT table
                  line; lesions/organs of another HU (hypodense, enhancing or bone-like) with clear border.
``mr_structure``  MR-like head/body slice with bias field and Rician noise: scalp ring, dark skull, tissue
                  texture; bright (T2-like) or dark lesions.
``us_first_try``  what a new user tries first: one bright or dark ellipse or disc on plain speckle (not in
                  :data:`KINDS`, so the seeded mixed sets stay as they were; :func:`first_try_set`).

Use :func:`phantom` for one image of a kind and :func:`benchmark_set` for a mixed, seeded set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from samie_node.testing.shapes import (
    blob_outline,
    fill_outline,
    place_centres,
    random_blob,
    rgb,
    size_of,
    smooth_noise,
    speckle,
)

KINDS = ("us_mass", "skin_lesion", "fundus", "ct_structure", "mr_structure")


@dataclass(frozen=True)
class Phantom:
    """One generated image with its truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    lesions: list[np.ndarray]  # per lesion (H, W) bool
    kind: str
    info: dict[str, Any] = field(default_factory=dict)  # generation parameters, for reports

    @property
    def truth(self) -> np.ndarray:
        """Union of the lesion masks, (H, W) bool."""
        union = np.zeros(self.image.shape[:2], bool)
        for mask in self.lesions:
            union |= mask
        return union


def _lesion_count(rng: np.random.Generator, lesions: int | None, most: int = 3) -> int:
    if lesions is not None:
        return lesions
    return int(
        rng.choice(
            np.arange(1, most + 1), p=np.array([0.6, 0.28, 0.12])[:most] / np.array([0.6, 0.28, 0.12])[:most].sum()
        )
    )


# -- ultrasound ---------------------------------------------------------------------------------------------


def us_mass(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """Breast-ultrasound-like B-mode image with 0-3 masses (hypoechoic in about 3 of 4)."""
    rows, cols = size_of(rng)
    count = _lesion_count(rng, lesions)
    grain = float(rng.uniform(0.8, 1.8))
    y = np.arange(rows, dtype=np.float32)[:, None] / rows
    x = np.arange(cols, dtype=np.float32)[None, :] / cols
    # Tissue layers: skin line, subcutaneous fat, glandular tissue, deep (muscle-like) layer.

    def wave(base: float, amp: float) -> np.ndarray:
        return np.asarray(base + amp * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2.0) + rng.uniform(0, 1))))

    fat_top, gland_top, deep_top = (
        wave(0.04, 0.01),
        wave(rng.uniform(0.15, 0.3), 0.03),
        wave(rng.uniform(0.7, 0.9), 0.03),
    )
    echo = np.full((rows, cols), 1.0, np.float32)
    echo = np.where(y < fat_top, 1.8, echo)
    echo = np.where((y >= fat_top) & (y < gland_top), rng.uniform(0.45, 0.7), echo)
    echo = np.where(y >= deep_top, rng.uniform(0.6, 0.85), echo)
    echo = np.asarray(cv2.GaussianBlur(echo.astype(np.float32), (0, 0), 2.0), np.float32)
    echo *= np.exp(0.15 * smooth_noise((rows, cols), rng, 0.05 * min(rows, cols)))  # slow echo variation
    echo *= np.exp(0.12 * smooth_noise((rows, cols), rng, 3.0))  # tissue micro-structure
    gain = np.clip(1.15 - rng.uniform(0.1, 0.5) * y, 0.4, None)  # imperfect depth compensation
    side = min(rows, cols)
    radii = [float(rng.uniform(0.06, 0.16) * side) for _ in range(count)]
    allowed = np.zeros((rows, cols), bool)
    allowed[int(0.08 * rows) :, :] = True  # masses lie below the skin line
    centres = place_centres((rows, cols), radii, rng, allowed=None, edge_probability=0.2)
    masks, info = [], []
    factor = np.ones((rows, cols), np.float32)
    shadow = np.ones((rows, cols), np.float32)
    for (cr, cc), radius in zip(centres, radii, strict=False):
        cr = max(cr, 0.1 * rows + 0.5 * radius)
        style = str(
            rng.choice(["round", "oval", "lobulated", "irregular", "spiculated"], p=[0.15, 0.3, 0.2, 0.2, 0.15])
        )
        mask = random_blob((rows, cols), (cr, cc), radius, rng, style)
        if mask.sum() < 50:
            continue
        dark = rng.random() < 0.75
        level = float(rng.uniform(0.08, 0.45)) if dark else float(rng.uniform(1.8, 3.0))
        factor[mask] = level
        ys, xs = np.nonzero(mask)
        if dark and rng.random() < 0.35:  # posterior acoustic shadowing below the mass
            left, right, bottom = xs.min(), xs.max(), ys.max()
            strength = float(rng.uniform(0.45, 0.75))
            column = np.zeros(cols, np.float32)
            column[left : right + 1] = 1.0
            column = cv2.GaussianBlur(column[None, :], (0, 0), max(2.0, 0.15 * (right - left)))[0]
            below = (np.arange(rows) > bottom - 0.3 * radius).astype(np.float32)[:, None]
            shadow *= 1.0 - (1.0 - strength) * column[None, :] * below * ~mask
        elif dark and level < 0.2 and rng.random() < 0.5:  # posterior enhancement behind a cyst
            left, right, bottom = xs.min(), xs.max(), ys.max()
            column = np.zeros(cols, np.float32)
            column[left : right + 1] = 1.0
            column = cv2.GaussianBlur(column[None, :], (0, 0), max(2.0, 0.15 * (right - left)))[0]
            below = (np.arange(rows) > bottom).astype(np.float32)[:, None]
            shadow *= 1.0 + 0.35 * column[None, :] * below
        masks.append(mask)
        info.append(
            dict(style=style, polarity="dark" if dark else "bright", level=round(level, 2), radius=round(radius, 1))
        )
    factor = np.asarray(
        cv2.GaussianBlur(factor, (0, 0), float(rng.uniform(0.8, 2.0))), np.float32
    )  # soft, not razor-sharp borders
    amplitude = echo * factor * shadow * gain * speckle((rows, cols), rng, grain)
    dynamic = float(rng.uniform(2.5, 5.0))
    display = np.log1p(dynamic * amplitude) / np.log1p(dynamic * 3.5)
    grey = 255.0 * np.clip(display * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05), 0, 1)
    grey += rng.normal(0, rng.uniform(1, 5), grey.shape)
    return Phantom(rgb(grey), masks, "us_mass", dict(size=(rows, cols), lesions=info))


def us_first_try(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """What a new user tries first: one bright or dark ellipse or disc on plain speckle, 256 or 400 px.

    No tissue layers, shadows or irregular outlines: a round or elongated ellipse (axes up to 3.2 : 1),
    anywhere (a quarter of them against the image edge), echo 0.15-0.45 or 2-2.8 times the background,
    speckle of any grain, log-compressed, sometimes with a depth gain slope. ``lesions=0`` gives the
    speckle alone.
    """
    size = int(rng.choice([256, 400]))
    rows, cols = size, size if rng.random() < 0.6 else int(size * rng.uniform(0.8, 1.3))
    radius = float(rng.uniform(0.05, 0.18) * min(rows, cols))
    stretch = 1.0 if rng.random() < 0.4 else float(rng.uniform(1.2, 1.8))  # semi-axes radius x stretch^+-1
    angle = float(rng.uniform(0, np.pi))
    reach = radius * stretch
    at_edge = rng.random() < 0.25
    if at_edge:
        side = int(rng.integers(4))
        along_r, along_c = float(rng.uniform(reach, rows - reach)), float(rng.uniform(reach, cols - reach))
        offset = 1.05 * radius
        centre = [(offset, along_c), (rows - offset, along_c), (along_r, offset), (along_r, cols - offset)][side]
    else:
        centre = (float(rng.uniform(0.25, 0.75) * rows), float(rng.uniform(0.25, 0.75) * cols))
    level = float(rng.choice([0.15, 0.3, 0.45, 2.0, 2.8]))
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xx - centre[1]) * cos + (yy - centre[0]) * sin) / reach
    v = (-(xx - centre[1]) * sin + (yy - centre[0]) * cos) / (radius / stretch)
    mask = u * u + v * v <= 1.0
    echo = float(rng.uniform(0.3, 0.6)) * speckle((rows, cols), rng, float(rng.uniform(0.8, 2.0)))
    masks = []
    if lesions != 0:
        echo[mask] *= level
        masks.append(mask)
    if rng.random() < 0.5:
        echo *= np.linspace(1.2, 0.7, rows, dtype=np.float32)[:, None]
    grey = 255.0 * np.log1p(4.0 * echo) / np.log1p(12.0)
    info = dict(size=(rows, cols), radius=round(radius, 1), stretch=round(stretch, 2), level=level, edge=at_edge)
    return Phantom(rgb(grey), masks, "us_first_try", info)


# -- skin ---------------------------------------------------------------------------------------------------


def _hair(image: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    rows, cols = image.shape[:2]
    layer = np.zeros((rows, cols), np.float32)
    colour = np.array(rng.choice([[40, 28, 22], [25, 20, 18], [70, 50, 35]]), np.float32)
    for _ in range(count):
        p0 = np.array([rng.uniform(-0.1, 1.1) * cols, rng.uniform(-0.1, 1.1) * rows])
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 1.0) * max(rows, cols)
        p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * length, 2)
        t = np.linspace(0, 1, 200)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        width = int(rng.integers(1, 4))
        cv2.polylines(layer, [np.rint(curve * 8).astype(np.int32)], False, 1.0, width, cv2.LINE_AA, shift=3)
    layer = np.clip(layer, 0, 1)[:, :, None] * rng.uniform(0.75, 0.95)
    return image * (1 - layer) + colour * layer


def skin_lesion(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """Dermoscopy-like RGB photograph: textured skin, 0-3 pigmented lesions, hair over everything."""
    rows, cols = size_of(rng)
    count = _lesion_count(rng, lesions)
    tone = np.array([rng.uniform(185, 235), rng.uniform(135, 190), rng.uniform(110, 170)], np.float32)
    image = np.empty((rows, cols, 3), np.float32)
    image[...] = tone
    side = min(rows, cols)
    light = 1.0 + 0.08 * smooth_noise((rows, cols), rng, 0.25 * side)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    centre = (rows / 2 + rng.normal(0, 0.05 * rows), cols / 2 + rng.normal(0, 0.05 * cols))
    distance = np.hypot((yy - centre[0]) / rows, (xx - centre[1]) / cols)
    light *= 1.0 - rng.uniform(0.0, 0.35) * np.clip(distance / 0.7, 0, 1) ** 2  # vignetting
    texture = 6 * smooth_noise((rows, cols), rng, 1.0) + 5 * smooth_noise((rows, cols), rng, 4.0)
    image = image * light[:, :, None] + texture[:, :, None] * np.array([1.0, 0.9, 0.8], np.float32)
    if count > 1:
        radii = [float(rng.uniform(0.07, 0.16) * side) for _ in range(count)]
    else:
        radii = [float(rng.uniform(0.12, 0.3) * side) for _ in range(count)]
    centres = place_centres((rows, cols), radii, rng, edge_probability=0.15)
    masks, info = [], []
    for (cr, cc), radius in zip(centres, radii, strict=False):
        style = str(rng.choice(["oval", "lobulated", "irregular"], p=[0.25, 0.35, 0.4]))
        mask = random_blob((rows, cols), (cr, cc), radius, rng, style)
        if mask.sum() < 50:
            continue
        darkness = float(rng.uniform(0.25, 0.7))  # fraction of skin brightness left
        pigment = np.array([1.0, 0.85, 0.75], np.float32) * darkness  # brown: blue and green absorbed more
        variegation = np.exp(
            0.25 * smooth_noise((rows, cols), rng, 0.08 * radius) + 0.15 * smooth_noise((rows, cols), rng, 0.3 * radius)
        )
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), float(rng.uniform(1.0, 0.08 * radius + 1.5)))
        alpha = soft[:, :, None]
        lesion_colour = (
            image * pigment[None, None, :] * variegation[:, :, None] ** np.array([1.0, 1.1, 1.2], np.float32)
        )
        image = image * (1 - alpha) + lesion_colour * alpha
        masks.append(mask)
        info.append(dict(style=style, darkness=round(darkness, 2), radius=round(radius, 1)))
    hairs = int(rng.choice([0, 0, 2, 5, 10, 20]))
    image = _hair(image, rng, hairs)
    image += rng.normal(0, rng.uniform(1, 4), image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Phantom(image, masks, "skin_lesion", dict(size=(rows, cols), hairs=hairs, lesions=info))


# -- fundus -------------------------------------------------------------------------------------------------


def _vessel_tree(
    shape: tuple[int, int], start: tuple[float, float], rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Darkening map (0-1) of a branching vessel tree growing from ``start`` (row, column)."""
    layer = np.zeros(shape, np.float32)
    stack = []
    for base in (-np.pi / 2, np.pi / 2):  # main arcades up and down, bending towards the macula
        for spread in (-0.35, 0.35):
            stack.append(
                (np.array([start[1], start[0]], np.float64), base + spread + rng.normal(0, 0.15), 0.022 * scale, 0)
            )
    while stack:
        point, heading, width, depth = stack.pop()
        steps = int(rng.integers(10, 20))
        points = [point.copy()]
        curl = rng.normal(0, 0.05)
        for _ in range(steps):
            heading += curl + rng.normal(0, 0.08)
            point = point + 0.03 * scale * np.array([np.cos(heading), np.sin(heading)])
            points.append(point.copy())
        thickness = max(1, round(width))
        cv2.polylines(
            layer, [np.rint(np.array(points) * 8).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, shift=3
        )
        if depth < 4 and width > 1.2:
            for _ in range(2):
                stack.append((point, heading + rng.choice([-1, 1]) * rng.uniform(0.3, 0.9), width * 0.72, depth + 1))
    return np.clip(cv2.GaussianBlur(layer, (0, 0), 0.7), 0, 1)


def fundus(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """Fundus-like RGB photograph: circular field of view, vessels, macula; the optic disc is the lesion."""
    rows, cols = size_of(rng, square=0.6)
    has_disc = (lesions if lesions is not None else 1) > 0
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    fov_centre = (rows / 2 + rng.normal(0, 0.02 * rows), cols / 2 + rng.normal(0, 0.02 * cols))
    fov_radius = float(rng.uniform(0.44, 0.56) * min(rows, cols))  # above 0.5 the circle is cut
    distance = np.hypot(yy - fov_centre[0], xx - fov_centre[1])
    fov = distance <= fov_radius
    base = np.array([rng.uniform(170, 230), rng.uniform(60, 110), rng.uniform(20, 50)], np.float32)
    shade = 1.0 - rng.uniform(0.2, 0.45) * (distance / fov_radius) ** 2
    shade *= 1.0 + 0.06 * smooth_noise((rows, cols), rng, 0.1 * fov_radius)
    image = base[None, None, :] * shade[:, :, None]
    image *= (1.0 + 0.04 * smooth_noise((rows, cols), rng, 1.5))[:, :, None]
    side = rng.choice([-1, 1])
    disc_centre = (
        fov_centre[0] + rng.normal(0, 0.08) * fov_radius,
        fov_centre[1] + side * rng.uniform(0.25, 0.55) * fov_radius,
    )
    macula = (
        fov_centre[0] + rng.normal(0, 0.05) * fov_radius,
        fov_centre[1] - side * rng.uniform(0.05, 0.2) * fov_radius,
    )
    macula_map = np.exp(-(((yy - macula[0]) ** 2 + (xx - macula[1]) ** 2) / (2 * (0.12 * fov_radius) ** 2)))
    image *= (1.0 - rng.uniform(0.1, 0.3) * macula_map)[:, :, None]
    masks, info = [], []
    disc_radius = float(rng.uniform(0.1, 0.16) * fov_radius)
    if has_disc:
        mask = fill_outline(
            (rows, cols),
            blob_outline(disc_centre, disc_radius, rng, aspect=float(rng.uniform(0.9, 1.12)), roughness=0.04),
        )
        brightness = float(rng.uniform(0.55, 1.0))
        disc_colour = np.array([250, 225, 150], np.float32) * np.array(
            [1.0, rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0)]
        )
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), float(rng.uniform(1.0, 0.12 * disc_radius + 1)))
        cup = np.exp(-(((yy - disc_centre[0]) ** 2 + (xx - disc_centre[1]) ** 2) / (2 * (0.4 * disc_radius) ** 2)))
        target = disc_colour[None, None, :] * (0.85 + 0.15 * cup[:, :, None])
        alpha = (brightness * soft)[:, :, None]
        image = image * (1 - alpha) + target * alpha
        masks.append(mask & fov)
        info.append(dict(radius=round(disc_radius, 1), brightness=round(brightness, 2)))
    vessels = _vessel_tree((rows, cols), disc_centre, rng, fov_radius)
    vessel_colour = np.array([rng.uniform(100, 150), rng.uniform(20, 45), rng.uniform(10, 30)], np.float32)
    strength = rng.uniform(0.5, 0.85)
    image = image * (1 - strength * vessels[:, :, None]) + vessel_colour * strength * vessels[:, :, None]
    image += rng.normal(0, rng.uniform(1, 4), image.shape)
    edge = np.clip((fov_radius - distance) / 2.0, 0, 1)  # anti-aliased field-of-view edge
    image = image * edge[:, :, None] + rng.uniform(0, 6)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Phantom(image, masks, "fundus", dict(size=(rows, cols), fov_radius=round(fov_radius, 1), lesions=info))


# -- CT -----------------------------------------------------------------------------------------------------


def ct_structure(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """Windowed CT-like axial slice: body with fat layer on air, a CT table, 0-3 structures of other HU."""
    rows, cols = size_of(rng, square=0.7)
    count = _lesion_count(rng, lesions)
    _yy, _xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    centre = (rows * rng.uniform(0.45, 0.52), cols * rng.uniform(0.47, 0.53))
    semi = (rows * rng.uniform(0.28, 0.4), cols * rng.uniform(0.35, 0.47))
    outline = blob_outline(centre, 1.0, rng, roughness=0.03)
    outline = np.stack(
        [centre[1] + (outline[:, 0] - centre[1]) * semi[1], centre[0] + (outline[:, 1] - centre[0]) * semi[0]], axis=1
    )
    body = fill_outline((rows, cols), outline)
    fat_thickness = float(rng.uniform(0.03, 0.1) * min(semi))
    inner = cv2.erode(
        body.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(fat_thickness) + 1,) * 2)
    ).astype(bool)
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu[body] = -100.0
    soft = 40.0 + 8.0 * smooth_noise((rows, cols), rng, 0.05 * min(rows, cols))
    hu[inner] = soft[inner]
    # CT table: a bright curved line under the body, from edge to edge.
    table_y = min(rows - 3, int(centre[0] + semi[0] + rng.uniform(4, 0.06 * rows)))
    hu[table_y : table_y + int(rng.integers(2, 5)), :] = 300.0
    allowed = cv2.erode(inner.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    side = min(semi)
    radii = [float(rng.uniform(0.1, 0.3) * side) for _ in range(count)]
    centres = place_centres((rows, cols), radii, rng, allowed=allowed, margin=1.3)
    masks, info = [], []
    for (cr, cc), radius in zip(centres, radii, strict=False):
        kind = str(rng.choice(["hypodense", "enhancing", "bone"], p=[0.5, 0.35, 0.15]))
        style = str(rng.choice(["round", "oval", "lobulated", "irregular"], p=[0.3, 0.35, 0.2, 0.15]))
        mask = random_blob((rows, cols), (cr, cc), radius, rng, style) & inner
        if mask.sum() < 50:
            continue
        value = {"hypodense": rng.uniform(-20, 15), "enhancing": rng.uniform(90, 180), "bone": rng.uniform(300, 900)}[
            kind
        ]
        hu[mask] = value + 4.0 * smooth_noise((rows, cols), rng, 3.0)[mask]
        masks.append(mask)
        info.append(dict(kind=kind, style=style, hu=round(float(value)), radius=round(radius, 1)))
    hu = np.asarray(cv2.GaussianBlur(hu, (0, 0), float(rng.uniform(0.6, 1.2))), np.float32)  # scanner point spread
    hu += rng.normal(0, rng.uniform(6, 22), hu.shape).astype(np.float32)
    level, width = float(rng.uniform(30, 60)), float(rng.uniform(300, 450))
    grey = np.clip((hu - (level - width / 2)) / width, 0, 1) * 255.0
    return Phantom(
        rgb(grey), masks, "ct_structure", dict(size=(rows, cols), window=(round(level), round(width)), lesions=info)
    )


# -- MR -----------------------------------------------------------------------------------------------------


def mr_structure(rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """MR-like head slice: scalp, dark skull, textured tissue, bias field, Rician noise, 0-3 lesions."""
    rows, cols = size_of(rng, square=0.7)
    count = _lesion_count(rng, lesions)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    centre = (rows * rng.uniform(0.46, 0.54), cols * rng.uniform(0.46, 0.54))
    semi = (rows * rng.uniform(0.36, 0.45), cols * rng.uniform(0.3, 0.42))
    radial = np.hypot((yy - centre[0]) / semi[0], (xx - centre[1]) / semi[1])
    head = radial <= 1.0
    skull_outer, brain_edge = rng.uniform(0.9, 0.94), rng.uniform(0.84, 0.88)
    signal = np.zeros((rows, cols), np.float32)
    signal[head] = rng.uniform(0.7, 0.9)  # scalp fat
    signal[radial <= skull_outer] = rng.uniform(0.05, 0.15)  # cortical bone, dark
    brain = radial <= brain_edge
    tissue = (
        0.45
        + 0.04 * smooth_noise((rows, cols), rng, 0.03 * min(rows, cols))
        + 0.03 * smooth_noise((rows, cols), rng, 3.0)
    )
    signal[brain] = tissue[brain]
    allowed = cv2.erode(brain.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    side = min(semi) * brain_edge
    radii = [float(rng.uniform(0.08, 0.25) * side) for _ in range(count)]
    centres = place_centres((rows, cols), radii, rng, allowed=allowed, margin=1.3)
    masks, info = [], []
    for (cr, cc), radius in zip(centres, radii, strict=False):
        bright = rng.random() < 0.7
        style = str(rng.choice(["round", "oval", "lobulated", "irregular"], p=[0.25, 0.35, 0.2, 0.2]))
        mask = random_blob((rows, cols), (cr, cc), radius, rng, style) & brain
        if mask.sum() < 50:
            continue
        value = float(rng.uniform(0.72, 0.95) if bright else rng.uniform(0.12, 0.28))
        signal[mask] = value + 0.03 * smooth_noise((rows, cols), rng, 2.0)[mask]
        masks.append(mask)
        info.append(
            dict(polarity="bright" if bright else "dark", value=round(value, 2), style=style, radius=round(radius, 1))
        )
    signal = np.asarray(cv2.GaussianBlur(signal, (0, 0), float(rng.uniform(0.6, 1.2))), np.float32)
    bias = np.exp(rng.uniform(0.1, 0.35) * smooth_noise((rows, cols), rng, 0.3 * min(rows, cols)))
    sigma = float(rng.uniform(0.015, 0.05))
    magnitude = np.hypot(signal * bias + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    low, high = np.percentile(magnitude, (0.5, 99.5))
    grey = np.clip((magnitude - low) / (high - low), 0, 1) * 255.0
    return Phantom(rgb(grey), masks, "mr_structure", dict(size=(rows, cols), noise=round(sigma, 3), lesions=info))


# -- sets ---------------------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[..., Phantom]] = {
    "us_mass": us_mass,
    "skin_lesion": skin_lesion,
    "fundus": fundus,
    "ct_structure": ct_structure,
    "mr_structure": mr_structure,
    "us_first_try": us_first_try,
}


def phantom(kind: str, rng: np.random.Generator, lesions: int | None = None) -> Phantom:
    """One phantom of ``kind``; ``lesions`` fixes the count (0 gives a lesion-free image)."""
    try:
        generator = GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {KINDS}") from None
    return generator(rng, lesions)


def noise_only(rng: np.random.Generator) -> Phantom:
    """A lesion-free control: flat field, Gaussian noise, speckle or smooth random texture."""
    rows, cols = size_of(rng)
    style = str(rng.choice(["flat", "gauss", "speckle", "texture", "rgb_noise"]))
    if style == "flat":
        image = np.full((rows, cols, 3), int(rng.integers(0, 256)), np.uint8)
    elif style == "gauss":
        image = rgb(rng.uniform(60, 190) + rng.uniform(5, 40) * rng.standard_normal((rows, cols)))
    elif style == "speckle":
        amplitude = speckle((rows, cols), rng, float(rng.uniform(0.8, 2.0)))
        image = rgb(255 * np.clip(np.log1p(3 * amplitude) / np.log1p(10.5), 0, 1))
    elif style == "texture":
        image = rgb(128 + 30 * smooth_noise((rows, cols), rng, float(rng.uniform(2, 10))))
    else:
        base = rng.uniform(40, 220, 3)
        image = np.clip(np.rint(base + rng.normal(0, 12, (rows, cols, 3))), 0, 255).astype(np.uint8)
    return Phantom(image, [], "noise", dict(size=(rows, cols), style=style))


def benchmark_set(
    seed: int, per_kind: int = 12, negatives_per_kind: int = 2, controls: int = 4, kinds: tuple[str, ...] = KINDS
) -> list[Phantom]:
    """A seeded mixed set: ``per_kind`` images of each kind (``negatives_per_kind`` of them lesion-free),
    plus ``controls`` noise-only/flat images. Same seed, same pixels."""
    rng = np.random.default_rng(seed)
    out: list[Phantom] = []
    for kind in kinds:
        for index in range(per_kind):
            count = 0 if index < negatives_per_kind else None
            out.append(phantom(kind, rng, count))
    for _ in range(controls):
        out.append(noise_only(rng))
    return out


def first_try_set(seed: int, count: int = 40, negatives: int = 4) -> list[Phantom]:
    """``count`` seeded :func:`us_first_try` images, the first ``negatives`` of them speckle alone."""
    rng = np.random.default_rng(seed)
    return [us_first_try(rng, 0 if index < negatives else None) for index in range(count)]


def contact_sheet(phantoms: list[Phantom], tile: int = 192, columns: int = 6) -> np.ndarray:
    """RGB picture of phantoms with their truth outlined in green."""
    tiles = []
    for item in phantoms:
        picture = item.image.copy()
        contours, _ = cv2.findContours(item.truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, (0, 255, 0), max(1, int(max(picture.shape[:2]) / tile)))
        small = cv2.resize(picture, (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(
            small, f"{item.kind[:8]} n={len(item.lesions)}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 0), 1
        )
        tiles.append(small)
    while len(tiles) % columns:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    return np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])


if __name__ == "__main__":
    import sys

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    items = benchmark_set(seed, per_kind=6, negatives_per_kind=1, controls=4)
    sheet = contact_sheet(items)
    cv2.imwrite(f"/work/scratch-regions/out/phantoms_seed{seed}.png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(len(items), "phantoms", [len(p.lesions) for p in items])
