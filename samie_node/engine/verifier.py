"""A learned check of automatic regions on LiteMedSAM's own image embedding.

The hand measurements of :mod:`samie_node.engine.structures` see grey levels and edges; on ultrasound
speckle a piece of tissue texture can have both. LiteMedSAM's image encoder has already described every
4 x 4 px cell of the image (a 256-channel embedding), and a lesion's cells differ from tissue's in ways the
grey levels alone do not show. So each candidate mask is described by the embedding averaged over the
cells inside the mask and by that mean minus the mean over a ring of cells around it (:func:`pooled`), and
a logistic regression on that description gives the probability that the mask is a lesion rather than
background (:class:`Verifier`). A profile's ``min_learned`` asks for that probability.

The regression is trained offline by ``bench/train_verifier.py`` on generated ultrasound images of seeds
other than the ones the benchmark reports (labels: a mask with IoU >= 0.5 with a lesion is one; a mask
mostly outside every lesion is not) and ships in the package beside this module, with the SHA-256 of the
LiteMedSAM weights whose embedding it was trained on: another model's embedding means nothing to it, so
:func:`packaged_verifier` gives None for any other weights and the profile's hand thresholds decide alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: The packaged regression (written by ``bench/train_verifier.py``).
PACKAGED = Path(__file__).resolve().parent / "trained" / "region-verifier-litemedsam.npz"
#: The ring's width in embedding cells: this share of the square root of the region's cell count, at least 2.
RING_SHARE = 0.6
MIN_RING = 2


def _used(grid: tuple[int, int], input_size: tuple[int, int], encoder_size: int) -> tuple[int, int]:
    """How many of the embedding's rows and columns the image covers: the encoder saw it resized to
    ``input_size`` and padded to ``encoder_size`` square, and its embedding has ``grid`` cells over that."""
    rows, cols = grid
    return (
        max(1, min(rows, round(input_size[0] * rows / encoder_size))),
        max(1, min(cols, round(input_size[1] * cols / encoder_size))),
    )


def _cells(mask: np.ndarray, grid: tuple[int, int], input_size: tuple[int, int], encoder_size: int) -> np.ndarray:
    """The share of each embedding cell covered by an image-size bool ``mask``, as an (h, w) float32 map."""
    used_rows, used_cols = _used(grid, input_size, encoder_size)
    cover = np.zeros(grid, np.float32)
    cover[:used_rows, :used_cols] = cv2.resize(
        mask.astype(np.float32), (used_cols, used_rows), interpolation=cv2.INTER_AREA
    )
    return cover


def pooled(
    embedding: np.ndarray, mask: np.ndarray, input_size: tuple[int, int], encoder_size: int
) -> np.ndarray | None:
    """The description of ``mask`` (image-size bool) on ``embedding`` ((C, h, w) float32): the mean over the
    cells at least half inside, then that minus the mean over a ring of cells around them (2C values); None
    when the mask covers no cell by half or has no ring (it fills the image)."""
    channels, rows, cols = embedding.shape
    cover = _cells(mask, (rows, cols), input_size, encoder_size)
    inside = cover >= 0.5
    if not inside.any():
        if cover.max() <= 0:
            return None
        inside = cover >= cover.max()
    used_rows, used_cols = _used((rows, cols), input_size, encoder_size)
    used = np.zeros((rows, cols), bool)
    used[:used_rows, :used_cols] = True
    width = max(MIN_RING, round(RING_SHARE * float(np.sqrt(inside.sum()))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    ring = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool) & ~inside & used & (cover < 0.5)
    if not ring.any():
        return None
    flat = embedding.reshape(channels, -1)
    inside_mean = flat[:, inside.ravel()].mean(axis=1)
    ring_mean = flat[:, ring.ravel()].mean(axis=1)
    described: np.ndarray = np.concatenate([inside_mean, inside_mean - ring_mean]).astype(np.float32)
    return described


@dataclass(frozen=True)
class Verifier:
    """A logistic regression on :func:`pooled` descriptions, standardised first, for one model's weights."""

    weights_sha256: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def probability(self, described: np.ndarray) -> float:
        """The probability that the described mask is a lesion (0 to 1)."""
        logit = float(((described - self.mean) / self.scale) @ self.coef) + self.intercept
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0))))

    def score(self, described: np.ndarray | None) -> float:
        """The ``learned`` feature of a mask: :meth:`probability` of its description, 0.0 when it has none
        (:func:`pooled` could not describe it)."""
        return 0.0 if described is None else self.probability(described.astype(np.float32))

    def save(self, path: Path) -> None:
        """Write the regression as an ``.npz`` file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez(
                handle,
                weights_sha256=np.asarray(self.weights_sha256),
                mean=self.mean.astype(np.float32),
                scale=self.scale.astype(np.float32),
                coef=self.coef.astype(np.float32),
                intercept=np.asarray(self.intercept, np.float64),
            )

    @classmethod
    def load(cls, path: Path) -> Verifier:
        """Read a regression written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                weights_sha256=str(data["weights_sha256"]),
                mean=np.asarray(data["mean"], np.float32),
                scale=np.asarray(data["scale"], np.float32),
                coef=np.asarray(data["coef"], np.float32),
                intercept=float(data["intercept"]),
            )


def packaged_verifier(weights_sha256: str, path: Path = PACKAGED) -> Verifier | None:
    """The packaged regression when it was trained on the embedding of the weights with ``weights_sha256``;
    None for other weights (or when the file is not there)."""
    if not path.is_file():
        return None
    verifier = Verifier.load(path)
    return verifier if verifier.weights_sha256 == weights_sha256 else None
