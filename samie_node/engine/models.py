"""The models the worker holds for its whole life: loaded once at start-up, on the configured device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from samie_node import __version__
from samie_node.config import Settings
from samie_node.encode.seg import AlgorithmInfo
from samie_node.engine.classify import Classifier, ClassLabel, load_classifier
from samie_node.engine.device import describe_device, select_device, select_precision
from samie_node.engine.masks import Segmenter
from samie_node.engine.weights import load_segmenter

LOG = logging.getLogger("samie_node.engine.models")


@dataclass(frozen=True)
class ModelsInfo:
    """What the node needs to know about the models to encode their results, without holding them.

    With the Ray backend the models live in the engine workers; each worker reports this, and the node
    accepts only workers whose algorithm and classes are the ones it started with (output UIDs are
    derived from ``algorithm.model_version``, so mixed models would give one study two identities).
    """

    algorithm: AlgorithmInfo
    class_labels: tuple[ClassLabel, ...] | None
    device: str

    def same_models(self, other: ModelsInfo) -> bool:
        """True when ``other`` makes the same outputs (the device may differ)."""
        return self.algorithm == other.algorithm and self.class_labels == other.class_labels


@dataclass(frozen=True)
class Models:
    """A segmenter, an optional classifier, and the identity both give to every output."""

    segmenter: Segmenter
    classifier: Classifier | None
    algorithm: AlgorithmInfo
    device: str

    @property
    def info(self) -> ModelsInfo:
        """The identity and classes of these models."""
        labels = tuple(self.classifier.labels) if self.classifier is not None else None
        return ModelsInfo(self.algorithm, labels, self.device)


def load_models(settings: Settings) -> Models:
    """Load, warm up and describe the configured models.

    Raises
    ------
    ModelError
        If a checkpoint is missing, corrupt or does not match its architecture.
    """
    started = time.monotonic()
    device = select_device(settings.engine)
    precision = select_precision(settings.engine, device)
    segmenter = load_segmenter(settings.segmenter, device, precision)
    classifier = load_classifier(settings.classifier.checkpoint, device) if settings.classifier.checkpoint else None
    algorithm = AlgorithmInfo(
        name=f"samie-node SAM-IE {segmenter.name}",
        version=f"samie-node {__version__}; {segmenter.name} {segmenter.version}",
        weights_sha256=segmenter.weights_sha256,
        classifier_sha256=classifier.sha256 if classifier is not None else "",
    )
    LOG.info(
        "models ready in %.1f s: segmenter=%s weights_sha256=%s classifier=%s device=%s precision=%s",
        time.monotonic() - started,
        segmenter.name,
        segmenter.weights_sha256[:16],
        classifier.sha256[:16] if classifier is not None else "none",
        describe_device(device),
        precision or "fp32",
    )
    return Models(segmenter, classifier, algorithm, describe_device(device))
