"""Train and evaluate classifiers on SAM-IE enhanced images (``samie-node train`` / ``evaluate``).

A dataset is a folder with one sub-folder per class holding DICOM, PNG or JPEG files; an optional
``labels.json`` maps each class name to its code (``code_value``, ``coding_scheme_designator``,
``code_meaning``) for the SR. Without it, classes get local codes in the private scheme ``99SAMIE``.

The flow follows the SAM-IE paper:

1. every image is segmented once and its enhanced image cached on disk, keyed by the file's SHA-256, the
   segmenter (name, version, weights hash, settings) and the enhancement, so a second run or an
   ``evaluate`` on the same data does not segment again;
2. files are split into training and validation sets, stratified by class (all frames of one file on
   the same side);
3. the network trains on originals and enhanced images together (input mode ``both``) - or on one kind
   only, for comparison - with flips and quarter turns as augmentation;
4. after each epoch the validation accuracy and ROC AUC are measured, in the input mode the node will
   use (``both`` averages the softmax of original and enhanced); the best epoch's weights are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rich.progress
import torch
from rich.console import Console
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn

from samie_node import __version__
from samie_node.config import SegmenterSettings
from samie_node.engine.classify import (
    CheckpointContent,
    Classifier,
    ClassLabel,
    Preprocessing,
    build_model,
    file_sha256,
    load_classifier,
)
from samie_node.engine.enhance import enhancement_method
from samie_node.engine.masks import Segmenter
from samie_node.engine.prepare import frames_from_file, is_dicom_file
from samie_node.errors import InvalidInputError, UnsupportedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
LOCAL_SCHEME = "99SAMIE"


class Progress(Protocol):
    """Where long steps report; the CLI passes a rich progress bar, tests pass nothing."""

    def start(self, description: str, total: int) -> None:
        """Begin a step of ``total`` units."""
        ...

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units are done."""
        ...

    def note(self, message: str) -> None:
        """A line for the operator (epoch results and the like)."""
        ...


class SilentProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, description: str, total: int) -> None:
        """Ignore."""

    def advance(self, amount: int = 1) -> None:
        """Ignore."""

    def note(self, message: str) -> None:
        """Ignore."""


class RichProgress:
    """A :class:`Progress` drawn as a rich progress bar; use as a context manager."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar = rich.progress.Progress(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TimeElapsedColumn(),
            rich.progress.TimeRemainingColumn(),
            console=console,
        )
        self._task: rich.progress.TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def start(self, description: str, total: int) -> None:
        """Replace the current bar by a new one."""
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        """Move the current bar."""
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def note(self, message: str) -> None:
        """Print a line above the bar."""
        self._bar.console.print(message)


def settings_digest(settings: SegmenterSettings) -> str:
    """A short digest of the segmenter settings, part of the enhancement cache key."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; stored in the checkpoint so a comparison can repeat it exactly.

    Attributes
    ----------
    arch, arch_options
        The network (see :func:`samie_node.engine.classify.build_model`).
    epochs, batch_size, learning_rate, weight_decay
        AdamW with a cosine learning-rate schedule.
    image_size
        Side of the square network input.
    input_mode
        ``both`` (originals and enhanced images, the paper's setting), ``enhanced`` or ``original``.
    enhancement
        ``sam_ie`` or ``samaug``.
    validation_fraction, seed
        The stratified file-level split and every random choice.
    max_pixels
        Size limit for each file, checked before decoding.
    """

    arch: str = "isa_densenet"
    arch_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    image_size: int = 96
    input_mode: str = "both"
    enhancement: str = "sam_ie"
    validation_fraction: float = 0.2
    seed: int = 0
    max_pixels: int = 100_000_000


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


@dataclass(frozen=True)
class Evaluation:
    """Validation results of one model."""

    accuracy: float
    auc: float | None
    confusion: list[list[int]]
    count: int
    labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass
class TrainResult:
    """A trained model, its checkpoint content and the per-epoch history."""

    model: nn.Module
    content: CheckpointContent
    evaluation: Evaluation | None
    history: list[dict[str, float | None]]


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
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(source)
        handle, temporary = tempfile.mkstemp(prefix=".", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as stream:
                arrays = {f"frame_{i}": frame for i, frame in enumerate(frames)}
                np.savez_compressed(stream, count=np.int64(len(frames)), **arrays)  # type: ignore[arg-type]
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


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


# -- training ----------------------------------------------------------------------------------------


def _inputs(samples: Sequence[Sample], input_mode: str) -> tuple[list[np.ndarray], list[int]]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for sample in samples:
        if input_mode in ("original", "both"):
            images.append(sample.original)
            labels.append(sample.file.label)
        if input_mode in ("enhanced", "both"):
            images.append(sample.enhanced)
            labels.append(sample.file.label)
    return images, labels


def channel_statistics(images: Sequence[np.ndarray]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation (in [0, 1] units) of the training inputs."""
    stacked = np.stack(images).astype(np.float64) / 255.0
    mean = stacked.mean(axis=(0, 1, 2))
    std = np.maximum(stacked.std(axis=(0, 1, 2)), 1e-3)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips and quarter turns, per image (lesions have no orientation)."""
    out = []
    for image in batch:
        flips = torch.randint(0, 2, (2,), generator=generator)
        turns = int(torch.randint(0, 4, (1,), generator=generator))
        if flips[0]:
            image = image.flip(-1)
        if flips[1]:
            image = image.flip(-2)
        out.append(torch.rot90(image, turns, dims=(-2, -1)))
    return torch.stack(out)


def evaluate_samples(classifier: Classifier, samples: Sequence[Sample]) -> Evaluation:
    """Accuracy, ROC AUC (one-vs-rest macro for more than two classes) and confusion matrix."""
    names = [label.name for label in classifier.labels]
    if not samples:
        return Evaluation(float("nan"), None, [], 0, names)
    truth = np.array([s.file.label for s in samples])
    probabilities = classifier.predict([s.original for s in samples], [s.enhanced for s in samples])
    predicted = probabilities.argmax(axis=1)
    auc: float | None = None
    if len(np.unique(truth)) == len(names):
        if len(names) == 2:
            auc = float(roc_auc_score(truth, probabilities[:, 1]))
        else:
            auc = float(roc_auc_score(truth, probabilities, multi_class="ovr", labels=list(range(len(names)))))
    confusion = confusion_matrix(truth, predicted, labels=list(range(len(names))))
    return Evaluation(
        accuracy=float(accuracy_score(truth, predicted)),
        auc=auc,
        confusion=confusion.astype(int).tolist(),
        count=len(samples),
        labels=names,
    )


def fit(
    train_samples: Sequence[Sample],
    validation_samples: Sequence[Sample],
    labels: list[ClassLabel],
    config: TrainConfig,
    *,
    device: torch.device,
    progress: Progress,
    segmenter_identity: dict[str, str],
) -> TrainResult:
    """Train a classifier on prepared samples; keep the epoch with the best validation accuracy (then AUC).

    Raises
    ------
    InvalidInputError
        If there are no training samples.
    """
    if not train_samples:
        raise InvalidInputError("no training images")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, targets = _inputs(train_samples, config.input_mode)
    mean, std = channel_statistics(images)
    preprocessing = Preprocessing(config.image_size, mean, std)
    inputs = preprocessing.tensor(images)
    target_tensor = torch.tensor(targets, dtype=torch.long)
    model = build_model(config.arch, len(labels), config.arch_options).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=max(1, config.epochs * steps_per_epoch)
    )
    loss_function = nn.CrossEntropyLoss()
    content = CheckpointContent(
        arch=config.arch,
        labels=labels,
        input_mode=config.input_mode,
        preprocessing=preprocessing,
        arch_options=dict(config.arch_options),
        enhancement=config.enhancement,
        segmenter=segmenter_identity,
        training={k: v for k, v in asdict(config).items() if k != "arch_options"},
        version=f"samie-node {__version__}, trained {datetime.date.today().isoformat()}",
    )
    history: list[dict[str, float | None]] = []
    best: tuple[float, float, int] | None = None
    best_state: dict[str, torch.Tensor] = {}
    best_evaluation: Evaluation | None = None
    progress.start("train", config.epochs)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            batch = _augment(inputs[index], generator).to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_function(model(batch), target_tensor[index].to(device))
            loss.backward()
            optimiser.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(index)
        record: dict[str, float | None] = {"epoch": epoch, "loss": total_loss / len(images)}
        evaluation = None
        if validation_samples:
            evaluation = evaluate_samples(Classifier(model, content, sha256="", device=device), validation_samples)
            record.update(accuracy=evaluation.accuracy, auc=evaluation.auc)
        history.append(record)
        score = (
            (evaluation.accuracy, evaluation.auc if evaluation.auc is not None else 0.0, epoch)
            if evaluation
            else (0.0, 0.0, epoch)
        )
        if best is None or score[:2] > best[:2] or not validation_samples:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_evaluation = evaluation
        progress.note(_describe_epoch(record, config.epochs))
        progress.advance()
    model.load_state_dict(best_state)
    model.eval()
    content.metrics = {
        "history": history,
        "best_epoch": best[2] if best else config.epochs,
        "validation": best_evaluation.to_dict() if best_evaluation else None,
        "train_count": len(train_samples),
        "validation_count": len(validation_samples),
        "validation_files": sorted({s.file.relative for s in validation_samples}),
    }
    return TrainResult(model=model, content=content, evaluation=best_evaluation, history=history)


def _describe_epoch(record: dict[str, float | None], epochs: int) -> str:
    text = f"epoch {int(record['epoch'] or 0)}/{epochs}  loss {record['loss']:.4f}"
    if record.get("accuracy") is not None:
        text += f"  val accuracy {record['accuracy']:.3f}"
    if record.get("auc") is not None:
        text += f"  val AUC {record['auc']:.3f}"
    return text


def segmenter_identity(segmenter: Segmenter) -> dict[str, str]:
    """What a checkpoint records about the segmenter its enhanced images came from."""
    return {"name": segmenter.name, "version": segmenter.version, "weights_sha256": segmenter.weights_sha256}


def train_classifier(
    root: Path,
    config: TrainConfig,
    *,
    segmenter: Segmenter,
    device: torch.device,
    cache_dir: Path | None = None,
    settings_digest: str = "",
    progress: Progress | None = None,
) -> TrainResult:
    """Discover, enhance (cached), split and train; the caller saves the result.

    Parameters
    ----------
    root
        The dataset folder.
    config
        The training set-up.
    segmenter
        Makes the masks of the enhanced images (any :class:`~samie_node.engine.sam.Segmenter`).
    device
        Where the network trains.
    cache_dir
        Where enhanced images are cached; default ``<root>/.samie-cache``.
    settings_digest
        A digest of the segmenter settings, part of the cache key.
    progress
        Reports the steps; default silent.
    """
    progress = progress or SilentProgress()
    dataset = discover_dataset(root)
    _, validation_files = split_files(dataset.files, config.validation_fraction, config.seed)
    samples = _load_all(dataset, config, segmenter, cache_dir, settings_digest, progress)
    validation_names = {f.relative for f in validation_files}
    train_samples = [s for s in samples if s.file.relative not in validation_names]
    validation_samples = [s for s in samples if s.file.relative in validation_names]
    return fit(
        train_samples,
        validation_samples,
        dataset.labels,
        config,
        device=device,
        progress=progress,
        segmenter_identity=segmenter_identity(segmenter),
    )


def _load_all(
    dataset: Dataset,
    config: TrainConfig,
    segmenter: Segmenter,
    cache_dir: Path | None,
    settings_digest: str,
    progress: Progress,
) -> list[Sample]:
    cache = EnhancementCache(cache_dir or dataset.root / ".samie-cache", segmenter, config.enhancement, settings_digest)
    return load_samples(
        dataset.files,
        segmenter=segmenter,
        cache=cache,
        enhancement=config.enhancement,
        preprocessing=Preprocessing(config.image_size),
        max_pixels=config.max_pixels,
        progress=progress,
    )


@dataclass(frozen=True)
class EvaluationReport:
    """``samie-node evaluate``'s answer: the checkpoint's results, and optionally a baseline's."""

    checkpoint: Path
    sha256: str
    input_mode: str
    split: str
    evaluation: Evaluation
    baseline: Evaluation | None = None
    baseline_input_mode: str | None = None
    segmenter_matches: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        return data


def evaluate_checkpoint(
    checkpoint: Path,
    root: Path,
    *,
    segmenter: Segmenter,
    device: torch.device,
    cache_dir: Path | None = None,
    settings_digest: str = "",
    compare: bool = False,
    epochs: int | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint on its validation split of ``root`` (or on all of ``root`` if it has none).

    With ``compare``, a baseline trained on original images only, with the checkpoint's own training
    set-up (``epochs`` overrides its epoch count) and the same split, is evaluated on the same images:
    the "enhanced versus originals" comparison of the SAM-IE paper.

    Raises
    ------
    ModelError
        If the checkpoint cannot be loaded.
    InvalidInputError
        If the dataset does not have the checkpoint's classes.
    """
    progress = progress or SilentProgress()
    classifier = load_classifier(checkpoint, device)
    dataset = discover_dataset(root)
    if [label.name for label in dataset.labels] != [label.name for label in classifier.labels]:
        raise InvalidInputError(
            f"dataset classes {[label.name for label in dataset.labels]} differ from the checkpoint's "
            f"{[label.name for label in classifier.labels]}"
        )
    training = dict(classifier.content.training)
    known = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    config = TrainConfig(**{k: v for k, v in training.items() if k in known})
    config = replace(
        config, arch_options=dict(classifier.content.arch_options), enhancement=classifier.content.enhancement
    )
    samples = _load_all(dataset, config, segmenter, cache_dir, settings_digest, progress)
    validation_names = set(classifier.content.metrics.get("validation_files") or [])
    evaluated = [s for s in samples if s.file.relative in validation_names] if validation_names else samples
    split = "validation" if validation_names and evaluated else "all"
    if not evaluated:
        evaluated = samples
    report = EvaluationReport(
        checkpoint=checkpoint,
        sha256=classifier.sha256,
        input_mode=classifier.input_mode,
        split=split,
        evaluation=evaluate_samples(classifier, evaluated),
        segmenter_matches=classifier.content.segmenter.get("weights_sha256") in ("", None, segmenter.weights_sha256),
    )
    if not compare:
        return report
    train_samples = samples
    if split == "validation":
        train_samples = [s for s in samples if s.file.relative not in validation_names]
    baseline_config = replace(config, input_mode="original", epochs=epochs or config.epochs)
    baseline = fit(
        train_samples,
        evaluated,
        dataset.labels,
        baseline_config,
        device=device,
        progress=progress,
        segmenter_identity=segmenter_identity(segmenter),
    )
    baseline_classifier = Classifier(baseline.model, baseline.content, sha256="", device=device)
    return replace(report, baseline=evaluate_samples(baseline_classifier, evaluated), baseline_input_mode="original")
