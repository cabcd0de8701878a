"""Train classifiers on SAM-IE enhanced images (``samie-node train``).

The flow follows the SAM-IE paper: the dataset's images are enhanced once (cached, see
:mod:`samie_node.engine.dataset`) and split by file; the network trains on originals and enhanced images
together (input mode ``both``) - or on one kind only, for comparison - with flips and quarter turns as
augmentation; after each epoch the validation accuracy and ROC AUC are measured, in the input mode the node
will use (``both`` averages the softmax of original and enhanced); the best epoch's weights are kept.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samie_node import __version__
from samie_node.engine.classify import CheckpointContent, Classifier, ClassLabel, Preprocessing, build_model
from samie_node.engine.dataset import Dataset, EnhancementCache, Sample, discover_dataset, load_samples, split_files
from samie_node.engine.masks import Segmenter
from samie_node.engine.metrics import Evaluation, evaluate_samples
from samie_node.engine.progress import Progress, SilentProgress
from samie_node.errors import InvalidInputError


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


@dataclass
class TrainResult:
    """A trained model, its checkpoint content and the per-epoch history."""

    model: nn.Module
    content: CheckpointContent
    evaluation: Evaluation | None
    history: list[dict[str, float | None]]


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


@dataclass
class _Step:
    """One optimisation step after another: a model, its optimiser and schedule, its loss."""

    model: nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_function: nn.Module
    device: torch.device

    def epoch(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
        """Train one epoch over shuffled, augmented batches; returns the mean loss per image."""
        self.model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            batch = _augment(inputs[index], generator).to(self.device)
            self.optimiser.zero_grad(set_to_none=True)
            loss = self.loss_function(self.model(batch), targets[index].to(self.device))
            loss.backward()
            self.optimiser.step()
            self.scheduler.step()
            total_loss += float(loss.detach()) * len(index)
        return total_loss / len(inputs)


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
    step = _Step(model, optimiser, scheduler, nn.CrossEntropyLoss(), device)
    for epoch in range(1, config.epochs + 1):
        loss = step.epoch(inputs, target_tensor, config.batch_size, generator)
        record: dict[str, float | None] = {"epoch": epoch, "loss": loss}
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
    samples = load_all(dataset, config, segmenter, cache_dir, settings_digest, progress)
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


def load_all(
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
