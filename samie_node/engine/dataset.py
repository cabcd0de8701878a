"""Labelled image folders for training and evaluation: discover, split, enhance once and cache.

A dataset is a folder with one sub-folder per class holding DICOM, PNG or JPEG files; an optional
``labels.json`` maps each class name to its code (``code_value``, ``coding_scheme_designator``,
``code_meaning``) for the SR. Without it, classes get local codes in the private scheme ``99SAMIE``.
Every image is segmented once and its enhanced image cached on disk, keyed by the file's SHA-256, the
segmenter (name, version, weights hash, settings) and the enhancement, so a second run or an
``evaluate`` on the same data does not segment again. Files are split into training and validation sets,
stratified by class (all frames of one file on the same side).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from samie_node.config import SegmenterSettings
from samie_node.engine.classify import ClassLabel, Preprocessing, file_sha256
from samie_node.engine.enhance import enhancement_method
from samie_node.engine.masks import Segmenter
from samie_node.engine.prepare import frames_from_file, is_dicom_file
from samie_node.engine.progress import Progress
from samie_node.errors import InvalidInputError, UnsupportedImageError
from samie_node.files import write_atomically

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
LOCAL_SCHEME = "99SAMIE"


def settings_digest(settings: SegmenterSettings) -> str:
    """A short digest of the segmenter settings, part of the enhancement cache key."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetFile:
    """One labelled file of a dataset."""

    path: Path
    relative: str
    label: int


@dataclass(frozen=True)
class Dataset:
    """A labelled folder dataset: the classes and their files."""

    root: Path
    labels: list[ClassLabel]
    files: list[DatasetFile]


@dataclass(frozen=True)
class Sample:
    """One frame ready for training: resized original and enhanced image and its label."""

    file: DatasetFile
    frame: int
    original: np.ndarray
    enhanced: np.ndarray


# -- dataset -----------------------------------------------------------------------------------------


def _local_label(name: str) -> ClassLabel:
    code = re.sub(r"[^A-Z0-9]+", "-", name.upper()).strip("-")[:16] or "CLASS"
    return ClassLabel(name, code, LOCAL_SCHEME, name.replace("_", " "))


def discover_dataset(root: Path) -> Dataset:
    """Find the classes (sub-folders, sorted) and their image files.

    Raises
    ------
    InvalidInputError
        If ``root`` is not a folder, has fewer than two classes, a class has no images, or
        ``labels.json`` is malformed.
    """
    if not root.is_dir():
        raise InvalidInputError(f"dataset folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise InvalidInputError(f"{root} needs at least two class sub-folders, found {len(class_dirs)}")
    codes: dict[str, Any] = {}
    labels_file = root / "labels.json"
    if labels_file.is_file():
        try:
            codes = json.loads(labels_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{labels_file} is not valid JSON") from exc
        if not isinstance(codes, dict):
            raise InvalidInputError(f"{labels_file} must map class names to codes")
    labels: list[ClassLabel] = []
    files: list[DatasetFile] = []
    for index, folder in enumerate(class_dirs):
        if folder.name in codes:
            try:
                labels.append(ClassLabel.from_dict({"name": folder.name, **codes[folder.name]}))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{labels_file}: incomplete code for class {folder.name!r}") from exc
        else:
            labels.append(_local_label(folder.name))
        found = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and (p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and is_dicom_file(p)))
        )
        if not found:
            raise InvalidInputError(f"class {folder.name!r} has no DICOM, PNG or JPEG files")
        files += [DatasetFile(p, p.relative_to(root).as_posix(), index) for p in found]
    return Dataset(root=root, labels=labels, files=files)


def split_files(
    files: Sequence[DatasetFile], validation_fraction: float, seed: int
) -> tuple[list[DatasetFile], list[DatasetFile]]:
    """Stratified file-level split into (training, validation); no validation set when too small."""
    counts = np.bincount([f.label for f in files])
    n_validation = math.ceil(validation_fraction * len(files)) if validation_fraction > 0 else 0
    if n_validation < len(counts) or counts.min() < 2 or len(files) - n_validation < len(counts):
        return list(files), []
    train, validation = train_test_split(
        list(files), test_size=n_validation, stratify=[f.label for f in files], random_state=seed
    )
    return list(train), list(validation)


# -- enhancement cache -------------------------------------------------------------------------------


class EnhancementCache:
    """Enhanced images on disk, one compressed ``.npz`` per source file.

    The key is the SHA-256 of the file's bytes together with the segmenter's name, version, weights hash
    and settings and the enhancement, so changing any of them segments again rather than reusing
    stale masks.
    """

    def __init__(self, folder: Path, segmenter: Segmenter, enhancement: str, settings_digest: str = "") -> None:
        self.folder = folder
        self.identity = json.dumps(
            {
                "segmenter": segmenter.name,
                "version": segmenter.version,
                "weights": segmenter.weights_sha256,
                "settings": settings_digest,
                "enhancement": enhancement,
            },
            sort_keys=True,
        )

    def path(self, source: Path) -> Path:
        """Where ``source``'s enhanced frames are cached."""
        key = hashlib.sha256((file_sha256(source) + self.identity).encode()).hexdigest()
        return self.folder / f"{key}.npz"

    def load(self, source: Path) -> list[np.ndarray] | None:
        """The cached enhanced frames of ``source``, or None."""
        path = self.path(source)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return [data[f"frame_{i}"] for i in range(int(data["count"]))]
        except (OSError, KeyError, ValueError):
            return None  # a damaged entry is recomputed

    def store(self, source: Path, frames: Sequence[np.ndarray]) -> None:
        """Cache ``frames`` for ``source`` (atomically: temporary file, then rename)."""
        arrays = {f"frame_{i}": frame for i, frame in enumerate(frames)}
        write_atomically(
            self.path(source),
            lambda stream: np.savez_compressed(stream, count=np.int64(len(frames)), **arrays),  # type: ignore[arg-type]
            fsync=False,  # a cache: a lost entry is recomputed
        )


def load_samples(
    files: Sequence[DatasetFile],
    *,
    segmenter: Segmenter,
    cache: EnhancementCache,
    enhancement: str,
    preprocessing: Preprocessing,
    max_pixels: int,
    progress: Progress,
    batch_size: int = 8,
) -> list[Sample]:
    """Read every file, segment and enhance what the cache lacks, and resize both kinds of image.

    Raises
    ------
    UnsupportedImageError
        If a file cannot be read; the message names the file (dataset files carry no PHI in their names
        by this tool's contract, and the operator needs to find the culprit).
    """
    enhance = enhancement_method(enhancement)
    progress.start("segment and enhance", len(files))
    samples: list[Sample] = []
    pending: list[tuple[DatasetFile, list[np.ndarray]]] = []

    def flush() -> None:
        images = [frame for _, frames in pending for frame in frames]
        mask_sets = segmenter.segment(images) if images else []
        position = 0
        for item, frames in pending:
            masks = mask_sets[position : position + len(frames)]
            enhanced = [enhance(frame, mask).image for frame, mask in zip(frames, masks, strict=True)]
            position += len(frames)
            cache.store(item.path, enhanced)
            samples.extend(_samples(item, frames, enhanced, preprocessing))
            progress.advance()
        pending.clear()

    for item in files:
        try:
            frames = frames_from_file(item.path, max_pixels=max_pixels)
        except UnsupportedImageError as exc:
            raise UnsupportedImageError(f"{item.relative}: {exc}") from exc
        cached = cache.load(item.path)
        if cached is not None and len(cached) == len(frames):
            samples.extend(_samples(item, frames, cached, preprocessing))
            progress.advance()
            continue
        pending.append((item, frames))
        if sum(len(f) for _, f in pending) >= batch_size:
            flush()
    flush()
    return samples


def _samples(
    item: DatasetFile, frames: Sequence[np.ndarray], enhanced: Sequence[np.ndarray], preprocessing: Preprocessing
) -> list[Sample]:
    return [
        Sample(item, index, preprocessing.resize(original), preprocessing.resize(image))
        for index, (original, image) in enumerate(zip(frames, enhanced, strict=True))
    ]
