"""How good a classifier is: accuracy, ROC AUC and confusion matrix on a labelled split.

``samie-node evaluate`` runs it on a checkpoint; with ``--compare`` it also trains a baseline on original
images only, with the same split and set-up, as the SAM-IE paper compares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from samie_node.engine.classify import Classifier, load_classifier
from samie_node.engine.dataset import discover_dataset
from samie_node.engine.masks import Segmenter
from samie_node.engine.metrics import Evaluation, evaluate_samples
from samie_node.engine.progress import Progress, SilentProgress
from samie_node.engine.train import TrainConfig, fit, load_all, segmenter_identity
from samie_node.errors import InvalidInputError


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
