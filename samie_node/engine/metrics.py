"""A classifier's results on labelled samples: accuracy, ROC AUC and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from samie_node.engine.classify import Classifier
from samie_node.engine.dataset import Sample


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
