"""Labelled ultrasound-like phantoms: benign-looking vs malignant-looking masses, for the demo classifier.

Nothing here is a medical image, and the labels are the generator's, not a diagnosis. Each phantom is a
B-mode-like picture (tissue layers, slow echo variation, multiplicative Rayleigh speckle, log
compression) holding one hypoechoic mass whose look follows the textbook signs breast ultrasound is
classified by (the SAM-IE article classifies breast ultrasound):

``benign_appearing``
    round or oval, smooth outline, wider than tall, soft margin; sometimes posterior enhancement.
``malignant_appearing``
    irregular, spiculated outline, often taller than wide, sharper margin; sometimes posterior
    shadowing.

The cues overlap on purpose (same brightness range, same sizes, shadowing and enhancement only
sometimes), so a classifier has to look at the outline. :func:`write_labelled_set` writes a dataset
folder in the layout ``samie-node train``, ``evaluate`` and ``compare`` read: one sub-folder per class
and a ``labels.json`` with the codes the SR reports (a private ``99SAMIE`` scheme whose meanings say
"demo").

The demonstration classifier shipped in the package (``samie_node/engine/demo_model/``) was trained on
such a set by ``scripts/train-demo-classifier``; ``bench/compare.py`` runs the SAM-IE comparison on one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BENIGN = "benign_appearing"
MALIGNANT = "malignant_appearing"
LABELS = (BENIGN, MALIGNANT)
#: The codes the SR writes for the two classes; "demo" in the meaning keeps them from reading as a finding.
LABEL_CODES = {
    BENIGN: {
        "code_value": "DEMO-BENIGN",
        "coding_scheme_designator": "99SAMIE",
        "code_meaning": "benign-appearing (demo)",
    },
    MALIGNANT: {
        "code_value": "DEMO-MALIGNANT",
        "coding_scheme_designator": "99SAMIE",
        "code_meaning": "malignant-appearing (demo)",
    },
}


@dataclass(frozen=True)
class LabelledPhantom:
    """One generated image, its class and the mass's mask."""

    image: np.ndarray  # (H, W) uint8 grey
    mask: np.ndarray  # (H, W) bool
    label: str


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma, 0.3))
    scaled: np.ndarray = (noise - noise.mean()) / (noise.std() + 1e-6)
    return scaled


def _speckle(shape: tuple[int, int], rng: np.random.Generator, grain: float) -> np.ndarray:
    real = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    imag = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    magnitude = np.hypot(real, imag)
    return magnitude / float(magnitude.mean())


def _outline(centre: tuple[float, float], radius: float, rng: np.random.Generator, label: str) -> np.ndarray:
    """Closed (N, 2) x, y outline of the mass: smooth ellipse (benign) or irregular/spiculated (malignant)."""
    theta = np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    if label == BENIGN:
        roughness, spikes = float(rng.uniform(0.0, 0.05)), 0
        aspect = float(rng.uniform(1.0, 1.6))  # wider than tall
        angle = float(rng.uniform(-0.3, 0.3))
    else:
        roughness, spikes = float(rng.uniform(0.15, 0.35)), int(rng.integers(7, 14))
        aspect = float(rng.uniform(1.0, 1.4))
        angle = float(rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.6 else 0.0))  # often taller
    for harmonic in range(2, 9):
        r += roughness / harmonic * rng.standard_normal() * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    for _ in range(spikes):
        at = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.05, 0.09)
        distance = np.abs(np.angle(np.exp(1j * (theta - at))))
        r += rng.uniform(0.35, 0.7) * np.clip(1.0 - distance / width, 0.0, None) ** 1.5
    r = np.clip(r, 0.45, None) * radius
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta) / aspect
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([centre[1] + cos * x - sin * y, centre[0] + sin * x + cos * y], axis=1)


def _posterior(mask: np.ndarray, rows: int, cols: int, gain: float) -> np.ndarray:
    """A column below the mass brightened (gain > 1, enhancement) or darkened (gain < 1, shadowing)."""
    ys, xs = np.nonzero(mask)
    column = np.zeros(cols, np.float32)
    column[xs.min() : xs.max() + 1] = 1.0
    column = cv2.GaussianBlur(column[None, :], (0, 0), max(2.0, 0.15 * (xs.max() - xs.min())))[0]
    below = (np.arange(rows) > ys.max()).astype(np.float32)[:, None]
    change: np.ndarray = 1.0 + (gain - 1.0) * column[None, :] * below
    return change


def labelled_phantom(rng: np.random.Generator, label: str, size: int = 192) -> LabelledPhantom:
    """One phantom of class ``label`` (:data:`BENIGN` or :data:`MALIGNANT`), ``size`` x ``size`` pixels."""
    if label not in LABELS:
        raise ValueError(f"unknown phantom class {label!r}; expected one of {LABELS}")
    rows = cols = size
    y = np.arange(rows, dtype=np.float32)[:, None] / rows
    echo = np.where(y < 0.05, 1.8, 1.0) * np.ones((1, cols), np.float32)
    gland_top = float(rng.uniform(0.12, 0.25))
    echo = np.where((y >= 0.05) & (y < gland_top), rng.uniform(0.45, 0.7), echo).astype(np.float32)
    echo = cv2.GaussianBlur(echo, (0, 0), 2.0)
    echo *= np.exp(0.15 * _smooth_noise((rows, cols), rng, 0.08 * size) + 0.12 * _smooth_noise((rows, cols), rng, 2.5))
    radius = float(rng.uniform(0.14, 0.22) * size)
    centre = (float(rng.uniform(0.4, 0.6) * rows), float(rng.uniform(0.35, 0.65) * cols))
    canvas = np.zeros((rows, cols), np.uint8)
    cv2.fillPoly(canvas, [np.rint(_outline(centre, radius, rng, label) * 16).astype(np.int32)], 1, shift=4)
    mask = canvas.astype(bool)
    factor: np.ndarray = np.ones((rows, cols), np.float32)
    factor[mask] = float(rng.uniform(0.1, 0.35))
    margin = float(rng.uniform(1.5, 3.0) if label == BENIGN else rng.uniform(0.6, 1.4))
    factor = cv2.GaussianBlur(factor, (0, 0), margin)
    if label == BENIGN and rng.random() < 0.4:
        factor *= _posterior(mask, rows, cols, float(rng.uniform(1.2, 1.45)))
    elif label == MALIGNANT and rng.random() < 0.4:
        factor *= _posterior(mask, rows, cols, float(rng.uniform(0.5, 0.75)))
    gain = np.clip(1.15 - rng.uniform(0.1, 0.4) * y, 0.4, None)
    amplitude = echo * factor * gain * _speckle((rows, cols), rng, float(rng.uniform(0.8, 1.5)))
    dynamic = float(rng.uniform(2.5, 5.0))
    display = np.log1p(dynamic * amplitude) / np.log1p(dynamic * 3.5)
    grey = 255.0 * np.clip(display * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05), 0, 1)
    grey += rng.normal(0, rng.uniform(1, 4), grey.shape)
    return LabelledPhantom(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mask, label)


def write_labelled_set(folder: Path, *, seed: int, per_class: int, size: int = 192) -> list[Path]:
    """Write ``per_class`` PNG phantoms of each class under ``folder/<class>/`` and ``folder/labels.json``.

    The same seed gives the same pixels; the classes alternate so that any prefix of the set is balanced.
    Returns the image paths.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(
        json.dumps({name: LABEL_CODES[name] for name in LABELS}, indent=2) + "\n", encoding="utf-8"
    )
    paths: list[Path] = []
    for index in range(per_class):
        for label in LABELS:
            phantom = labelled_phantom(rng, label, size)
            path = folder / label / f"{label}-{seed}-{index:04d}.png"
            path.parent.mkdir(exist_ok=True)
            if not cv2.imwrite(str(path), phantom.image):
                raise OSError(f"could not write {path}")
            paths.append(path)
    return paths
