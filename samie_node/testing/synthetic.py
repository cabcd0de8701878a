"""Synthetic images with known ground truth, for tests, the demo and benchmarks.

Nothing here is a medical image. The generators imitate B-mode ultrasound closely enough to exercise the
engine: fully developed speckle (the magnitude of low-pass filtered complex Gaussian noise, which is
Rayleigh distributed like real speckle), a smooth intensity gradient, and lesions that differ in echo level
and shape. Every generator takes an explicit :class:`numpy.random.Generator`, so the same seed gives the
same pixels on every machine.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

#: US Image Storage: the synthetic lesions pretend to be single-frame ultrasound.

LesionKind = Literal["smooth_round", "irregular_spiculated"]
LESION_KINDS: tuple[LesionKind, LesionKind] = ("smooth_round", "irregular_spiculated")

#: Codes for the two synthetic classes, in a private ("99") coding scheme: they are not findings.
LESION_CODES: dict[str, dict[str, str]] = {
    "smooth_round": {
        "code_value": "SYN-SMOOTH",
        "coding_scheme_designator": "99SAMIE",
        "code_meaning": "Synthetic smooth round lesion",
    },
    "irregular_spiculated": {
        "code_value": "SYN-SPICULATED",
        "coding_scheme_designator": "99SAMIE",
        "code_meaning": "Synthetic irregular spiculated lesion",
    },
}


@dataclass(frozen=True)
class SyntheticImage:
    """An 8-bit RGB image (grey replicated in three channels) with its ground-truth mask."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool


def speckle(shape: tuple[int, int], rng: np.random.Generator, *, grain: float = 1.2) -> np.ndarray:
    """Return unit-mean Rayleigh speckle of ``shape`` as float32.

    Parameters
    ----------
    shape
        (rows, columns).
    rng
        The random source.
    grain
        Standard deviation in pixels of the Gaussian that correlates neighbouring samples; larger gives
        coarser speckle, like a lower-frequency probe.
    """
    real = rng.standard_normal(shape).astype(np.float32)
    imag = rng.standard_normal(shape).astype(np.float32)
    magnitude = np.hypot(cv2.GaussianBlur(real, (0, 0), grain), cv2.GaussianBlur(imag, (0, 0), grain))
    return (magnitude / float(magnitude.mean())).astype(np.float32)


def _to_rgb8(echo: np.ndarray) -> np.ndarray:
    """Log-compress an echo amplitude map to 8 bits, as a scanner's display chain does."""
    compressed = np.log1p(4.0 * np.clip(echo, 0.0, None))
    scaled = 255.0 * compressed / float(np.log1p(4.0 * 3.0))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def disc_on_speckle(
    size: int = 256,
    *,
    rng: np.random.Generator,
    center: tuple[float, float] | None = None,
    radius: float | None = None,
    contrast: float = 3.0,
) -> SyntheticImage:
    """A bright disc on dark speckle: the simplest object a segmenter must find.

    Parameters
    ----------
    size
        Side of the square image in pixels.
    rng
        The random source for position, radius and speckle.
    center
        (row, column) of the disc; random in the middle half of the image when None.
    radius
        Disc radius in pixels; random between 10 % and 20 % of ``size`` when None.
    contrast
        Ratio of mean echo inside to outside the disc.
    """
    if center is None:
        center = (float(rng.uniform(0.3, 0.7) * size), float(rng.uniform(0.3, 0.7) * size))
    if radius is None:
        radius = float(rng.uniform(0.10, 0.20) * size)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2
    echo = 0.5 * speckle((size, size), rng)
    echo[mask] *= contrast
    return SyntheticImage(image=_to_rgb8(echo), mask=mask)


def lesion_on_speckle(kind: LesionKind, size: int = 96, *, rng: np.random.Generator) -> SyntheticImage:
    """A dark lesion in brighter tissue speckle, smooth and round or irregular with spicules.

    The two kinds share size, position and echo level distributions, so only the outline tells them
    apart: smooth lesions are ellipses with a gently wavy border, spiculated ones have 7 to 12 sharp
    radial spikes of random length. This is the shape cue that SAM-IE's mask and contour channels make
    explicit to a classifier.

    Parameters
    ----------
    kind
        ``smooth_round`` or ``irregular_spiculated``.
    size
        Side of the square image in pixels.
    rng
        The random source.
    """
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
    center_row = rng.uniform(0.4, 0.6) * size
    center_col = rng.uniform(0.4, 0.6) * size
    base = rng.uniform(0.14, 0.2) * size
    theta = np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False)
    if kind == "smooth_round":
        aspect = rng.uniform(0.8, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        radius = base * (1.0 + 0.04 * np.sin(3 * theta + phase))
        radius = radius * aspect / np.sqrt((aspect * np.cos(theta)) ** 2 + np.sin(theta) ** 2)
    else:
        radius = base * 0.8 * (1.0 + 0.08 * np.sin(5 * theta + rng.uniform(0, 2 * np.pi)))
        for _ in range(int(rng.integers(7, 13))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.5, 0.9)
            width = rng.uniform(0.06, 0.12)
            distance = np.angle(np.exp(1j * (theta - angle)))
            radius = radius + base * length * np.clip(1.0 - np.abs(distance) / width, 0.0, None) ** 1.5
    points = np.stack([center_col + radius * np.cos(theta), center_row + radius * np.sin(theta)], axis=1)
    mask8 = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask8, [np.rint(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    mask = mask8.astype(bool)
    depth_gain = np.linspace(1.1, 0.8, size, dtype=np.float32)[:, None]
    echo = speckle((size, size), rng) * depth_gain
    echo[mask] *= rng.uniform(0.2, 0.3)
    return SyntheticImage(image=_to_rgb8(echo), mask=mask)


def synthetic_us_dataset(
    image: np.ndarray, *, sop_instance_uid: str, study_instance_uid: str, series_instance_uid: str, instance_number: int
) -> Dataset:
    """Wrap a synthetic grey image as a minimal, valid single-frame US Image Storage dataset.

    The dataset carries no patient data: the patient is called ``SYNTHETIC`` and every UID is derived
    from the caller's.
    """
    grey = np.ascontiguousarray(image[:, :, 0] if image.ndim == 3 else image, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.Modality = "US"
    ds.PatientName = "SYNTHETIC"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "samie-node synthetic"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grey.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = grey.tobytes()
    return ds


def write_lesion_dataset(
    root: Path,
    *,
    n_per_class: int,
    size: int = 96,
    image_format: Literal["png", "dicom"] = "png",
    seed: int = 0,
    kinds: Sequence[LesionKind] = LESION_KINDS,
) -> dict[str, list[Path]]:
    """Write a labelled two-class folder dataset: ``root/<class>/<n>.png`` or ``.dcm``.

    Also writes ``root/labels.json`` with each class's code (see :data:`LESION_CODES`), which
    ``samie-node train`` puts in the checkpoint for the SR.

    Parameters
    ----------
    root
        The dataset folder; created if missing.
    n_per_class
        Images per class.
    size
        Image side in pixels.
    image_format
        ``png`` (8-bit grey) or ``dicom`` (US Image Storage, explicit VR little endian).
    seed
        Seed of the random source; the same seed writes the same pixels.
    kinds
        Which classes to write.

    Returns
    -------
    dict
        Class name to the files written, in order.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=["samie-synthetic-study", str(seed)])
    written: dict[str, list[Path]] = {}
    for kind in kinds:
        folder = root / kind
        folder.mkdir(exist_ok=True)
        series_uid = generate_uid(entropy_srcs=["samie-synthetic-series", str(seed), kind])
        paths: list[Path] = []
        for index in range(n_per_class):
            sample = lesion_on_speckle(kind, size, rng=rng)
            if image_format == "png":
                path = folder / f"{index:04d}.png"
                cv2.imwrite(str(path), sample.image[:, :, 0])
            else:
                path = folder / f"{index:04d}.dcm"
                sop_uid = generate_uid(entropy_srcs=["samie-synthetic-sop", str(seed), kind, str(index)])
                ds = synthetic_us_dataset(
                    sample.image,
                    sop_instance_uid=sop_uid,
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    instance_number=index + 1,
                )
                pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        written[kind] = paths
    labels = {kind: LESION_CODES[kind] for kind in kinds}
    (root / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
    return written
