"""How good a trained classifier is: accuracy, ROC AUC and confusion matrix on its validation split.

``samie-node evaluate`` runs it on a checkpoint; ``samie-node compare`` (:mod:`samie_node.engine.compare`)
trains both arms of the SAM-IE comparison instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from samie_node.engine.classify import load_classifier
from samie_node.engine.dataset import discover_dataset
from samie_node.engine.masks import Segmenter
from samie_node.engine.metrics import Evaluation, evaluate_samples
from samie_node.engine.progress import Progress, SilentProgress
from samie_node.engine.train import TrainConfig, load_all
from samie_node.errors import InvalidInputError


@dataclass(frozen=True)
class EvaluationReport:
    """``samie-node evaluate``'s answer: the checkpoint's results, and optionally a baseline's."""

    checkpoint: Path
    sha256: str
    input_mode: str
    split: str
    evaluation: Evaluation
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
    input_mode: str | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint on its validation split of ``root`` (or on all of ``root`` if it has none).

    Parameters
    ----------
    input_mode
        The images the caller means to evaluate on (``original``, ``enhanced`` or ``both``); a checkpoint
        trained on other images is refused rather than scored on inputs it never saw.

    Raises
    ------
    ModelError
        If the checkpoint cannot be loaded.
    InvalidInputError
        If the dataset does not have the checkpoint's classes, or the checkpoint was trained on other
        images than ``input_mode``.
    """
    progress = progress or SilentProgress()
    classifier = load_classifier(checkpoint, device)
    if input_mode is not None and input_mode != classifier.input_mode:
        raise InvalidInputError(
            f"{checkpoint.name} was trained on {classifier.input_mode} images and cannot be evaluated on "
            f"{input_mode} images: train the other arm (samie-node compare trains both)"
        )
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
    samples = load_all(dataset, config, segmenter, cache_dir, settings_digest, progress)
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
    return report
