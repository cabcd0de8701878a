"""A classifier's results on labelled samples: accuracy, ROC AUC and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from samie_node.engine.classify import Classifier
from samie_node.engine.dataset import Sample

#: Bootstrap resamples for the confidence intervals, and their seed (the intervals are reproducible).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Evaluation:
    """Validation results of one model.

    ``accuracy_ci`` and ``auc_ci`` are 95 % percentile-bootstrap intervals over the evaluated images
    (resampled within each class, so every resample has all classes); None when there are too few.
    """

    accuracy: float
    auc: float | None
    confusion: list[list[int]]
    count: int
    labels: list[str]
    accuracy_ci: tuple[float, float] | None = None
    auc_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _auc(truth: np.ndarray, probabilities: np.ndarray, classes: int) -> float | None:
    if len(np.unique(truth)) < classes:
        return None
    if classes == 2:
        return float(roc_auc_score(truth, probabilities[:, 1]))
    return float(roc_auc_score(truth, probabilities, multi_class="ovr", labels=list(range(classes))))


def bootstrap_intervals(
    truth: np.ndarray, probabilities: np.ndarray, classes: int
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """95 % percentile-bootstrap intervals of accuracy and ROC AUC, resampling within each class."""
    by_class = [np.flatnonzero(truth == label) for label in range(classes)]
    if any(len(indices) < 2 for indices in by_class):
        return None, None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    accuracies, aucs = [], []
    predicted = probabilities.argmax(axis=1)
    for _ in range(BOOTSTRAP_RESAMPLES):
        sample = np.concatenate([rng.choice(indices, size=len(indices)) for indices in by_class])
        accuracies.append(float((predicted[sample] == truth[sample]).mean()))
        auc = _auc(truth[sample], probabilities[sample], classes)
        if auc is not None:
            aucs.append(auc)
    low, high = np.percentile(accuracies, [2.5, 97.5])
    auc_ci = tuple(float(v) for v in np.percentile(aucs, [2.5, 97.5])) if aucs else None
    return (float(low), float(high)), auc_ci  # type: ignore[return-value]


def evaluate_samples(classifier: Classifier, samples: Sequence[Sample]) -> Evaluation:
    """Accuracy, ROC AUC (one-vs-rest macro for more than two classes), their bootstrap intervals and the
    confusion matrix, in the classifier's own input mode."""
    names = [label.name for label in classifier.labels]
    if not samples:
        return Evaluation(float("nan"), None, [], 0, names)
    truth = np.array([s.file.label for s in samples])
    probabilities = classifier.predict([s.original for s in samples], [s.enhanced for s in samples])
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(truth, predicted, labels=list(range(len(names))))
    accuracy_ci, auc_ci = bootstrap_intervals(truth, probabilities, len(names))
    return Evaluation(
        accuracy=float(accuracy_score(truth, predicted)),
        auc=_auc(truth, probabilities, len(names)),
        confusion=confusion.astype(int).tolist(),
        count=len(samples),
        labels=names,
        accuracy_ci=accuracy_ci,
        auc_ci=auc_ci,
    )
