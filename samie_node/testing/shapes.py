"""Shapes and textures the phantoms (:mod:`samie_node.testing.phantoms`) are made of: speckle, smooth
noise, irregular blob outlines (lobulated, spiculated) and non-overlapping lesion centres."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def size_of(rng: np.random.Generator, low: int = 256, high: int = 512, square: float = 0.4) -> tuple[int, int]:
    """(rows, columns) between ``low`` and ``high``; square with probability ``square``."""
    rows = int(rng.integers(low, high + 1))
    if rng.random() < square:
        return rows, rows
    columns = int(np.clip(rows * rng.uniform(0.75, 1.35), low, high))
    return rows, columns


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit standard deviation (float32)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), max(sigma, 0.3))
    return np.asarray((blurred - blurred.mean()) / (blurred.std() + 1e-6), np.float32)


def speckle(shape: tuple[int, int], rng: np.random.Generator, grain: float = 1.2) -> np.ndarray:
    """Unit-mean Rayleigh speckle: magnitude of low-pass complex Gaussian noise (as in ``synthetic``)."""
    real = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    imag = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    magnitude = np.hypot(real, imag)
    return magnitude / float(magnitude.mean())


def blob_outline(
    center: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    *,
    aspect: float = 1.0,
    angle: float = 0.0,
    roughness: float = 0.1,
    lobes: int = 0,
    spikes: int = 0,
) -> np.ndarray:
    """Closed outline (N, 2) of x, y points: an ellipse made irregular by random low harmonics, optional
    lobulation (``lobes`` bumps) and spiculation (``spikes`` sharp rays)."""
    theta = np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for harmonic in range(2, 7):
        r += roughness / harmonic * rng.standard_normal() * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    if lobes:
        r += rng.uniform(0.06, 0.14) * np.cos(lobes * theta + rng.uniform(0, 2 * np.pi))
    for _ in range(spikes):
        at = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.05, 0.1)
        distance = np.abs(np.angle(np.exp(1j * (theta - at))))
        r += rng.uniform(0.25, 0.5) * np.clip(1.0 - distance / width, 0.0, None) ** 1.5
    r = np.clip(r, 0.45, None) * radius
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta) / aspect
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([center[1] + cos * x - sin * y, center[0] + sin * x + cos * y], axis=1)


def fill_outline(shape: tuple[int, int], outline: np.ndarray) -> np.ndarray:
    """Rasterise an outline of x, y points into a bool mask (sub-pixel accurate polygon fill)."""
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.rint(outline * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def random_blob(
    shape: tuple[int, int], center: tuple[float, float], radius: float, rng: np.random.Generator, style: str
) -> np.ndarray:
    """A lesion mask of ``style``: ``round``, ``oval``, ``lobulated``, ``irregular`` or ``spiculated``."""
    aspect = 1.0 if style == "round" else float(rng.uniform(1.0, 1.6))
    angle = float(rng.uniform(-0.5, 0.5))  # mostly "wider than tall", as benign breast masses are
    params: dict[str, Any] = {
        "round": dict(roughness=0.03),
        "oval": dict(roughness=0.06),
        "lobulated": dict(roughness=0.08, lobes=int(rng.integers(3, 6))),
        "irregular": dict(roughness=0.3),
        "spiculated": dict(roughness=0.15, spikes=int(rng.integers(5, 10))),
    }[style]
    return fill_outline(shape, blob_outline(center, radius, rng, aspect=aspect, angle=angle, **params))


def place_centres(
    shape: tuple[int, int],
    radii: list[float],
    rng: np.random.Generator,
    *,
    allowed: np.ndarray | None = None,
    edge_probability: float = 0.25,
    margin: float = 1.5,
) -> list[tuple[float, float]]:
    """Non-overlapping (row, column) centres for discs of ``radii``.

    With ``edge_probability`` a lesion is put near the image edge (its centre 0.4-1.0 radius from an edge,
    so it touches or is clipped by it); otherwise anywhere its disc fits inside ``allowed`` (whole image
    when None). Centres keep ``margin`` x the sum of radii apart.
    """
    rows, cols = shape
    centres: list[tuple[float, float]] = []
    for radius in radii:
        for _ in range(400):
            if allowed is None and rng.random() < edge_probability:
                side = rng.integers(4)
                offset = rng.uniform(0.4, 1.0) * radius
                along_r = rng.uniform(radius, rows - radius)
                along_c = rng.uniform(radius, cols - radius)
                centre = [(offset, along_c), (rows - offset, along_c), (along_r, offset), (along_r, cols - offset)][
                    side
                ]
            else:
                centre = (
                    rng.uniform(radius * 1.1, rows - radius * 1.1),
                    rng.uniform(radius * 1.1, cols - radius * 1.1),
                )
            if allowed is not None:
                r0, c0 = int(centre[0]), int(centre[1])
                reach = int(radius * 1.2)
                box = allowed[max(0, r0 - reach) : r0 + reach + 1, max(0, c0 - reach) : c0 + reach + 1]
                corners = [(r0 + dr, c0 + dc) for dr, dc in ((0, 0), (reach, 0), (-reach, 0), (0, reach), (0, -reach))]
                if not all(0 <= r < rows and 0 <= c < cols and allowed[r, c] for r, c in corners) or not box.all():
                    continue
            if all(
                np.hypot(centre[0] - o[0], centre[1] - o[1]) > margin * (radius + orad)
                for o, orad in zip(centres, radii, strict=False)
            ):
                centres.append((float(centre[0]), float(centre[1])))
                break
        else:
            break  # no room: fewer lesions
    return centres


def rgb(grey: np.ndarray) -> np.ndarray:
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey8[:, :, None], 3, axis=2)
