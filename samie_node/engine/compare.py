"""The SAM-IE comparison as a site can run it on its own labelled data (``samie-node compare``).

The article's claim is that a classifier sees better with the enhanced image. This module tests that
claim the only fair way: for each architecture, two networks are trained with the same split, the same
seed and the same set-up, one on the original images and one on the SAM-IE enhanced images, and both
are evaluated on the same validation images (accuracy and ROC AUC with bootstrap intervals, confusion
matrix). Whatever the answer, it is the answer for that data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from samie_node.engine.classify import Classifier
from samie_node.engine.dataset import discover_dataset, split_files
from samie_node.engine.masks import Segmenter
from samie_node.engine.metrics import Evaluation, evaluate_samples
from samie_node.engine.progress import Progress, SilentProgress
from samie_node.engine.train import TrainConfig, fit, load_all, segmenter_identity
from samie_node.errors import InvalidInputError

#: The two arms: what each network is trained and evaluated on.
ARMS = ("original", "enhanced")


@dataclass(frozen=True)
class ArmResult:
    """One architecture trained and evaluated on one kind of input."""

    arch: str
    input_mode: str
    epochs: int
    best_epoch: int
    evaluation: Evaluation


@dataclass(frozen=True)
class Comparison:
    """Both arms of every architecture, on one split."""

    dataset: str
    seed: int
    image_size: int
    enhancement: str
    train_count: int
    validation_files: list[str]
    arms: list[ArmResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``compare --json``)."""
        return asdict(self)


def compare(
    root: Path,
    configs: Sequence[TrainConfig],
    *,
    segmenter: Segmenter,
    device: torch.device,
    cache_dir: Path | None = None,
    settings_digest: str = "",
    progress: Progress | None = None,
) -> Comparison:
    """Train and evaluate each configuration's architecture on original and on enhanced images.

    Every configuration must share the split (validation fraction and seed), the image size and the
    enhancement, so that all arms see the same images.

    Raises
    ------
    InvalidInputError
        If the dataset is unusable, has no validation split, or the configurations disagree on the split.
    """
    if not configs:
        raise InvalidInputError("nothing to compare: no architecture given")
    first = configs[0]
    shared = {(c.validation_fraction, c.seed, c.image_size, c.enhancement, c.max_pixels) for c in configs}
    if len(shared) != 1:
        raise InvalidInputError("the compared configurations must share the split, image size and enhancement")
    progress = progress or SilentProgress()
    dataset = discover_dataset(root)
    _, validation_files = split_files(dataset.files, first.validation_fraction, first.seed)
    if not validation_files:
        raise InvalidInputError(f"{root} is too small for a validation split at {first.validation_fraction:.0%}")
    samples = load_all(dataset, first, segmenter, cache_dir, settings_digest, progress)
    validation_names = {f.relative for f in validation_files}
    train_samples = [s for s in samples if s.file.relative not in validation_names]
    validation_samples = [s for s in samples if s.file.relative in validation_names]
    arms = []
    for config in configs:
        for input_mode in ARMS:
            progress.note(f"{config.arch} on {input_mode} images")
            result = fit(
                train_samples,
                validation_samples,
                dataset.labels,
                replace(config, input_mode=input_mode),
                device=device,
                progress=progress,
                segmenter_identity=segmenter_identity(segmenter),
            )
            classifier = Classifier(result.model, result.content, sha256="", device=device)
            best_epoch = int(result.content.metrics.get("best_epoch", config.epochs))
            evaluation = evaluate_samples(classifier, validation_samples)
            arms.append(ArmResult(config.arch, input_mode, config.epochs, best_epoch, evaluation))
    return Comparison(
        dataset=str(root),
        seed=first.seed,
        image_size=first.image_size,
        enhancement=first.enhancement,
        train_count=len(train_samples),
        validation_files=sorted(validation_names),
        arms=arms,
    )
