"""The models the worker holds for its whole life: loaded once at start-up, on the configured device."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

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


def engine_cache(settings: Settings) -> Path:
    """Where the engine keeps what it derives from the packaged weights (OpenVINO graphs).

    ``engine.cache_dir``, else the user's cache folder: shared by every node and data folder of the user,
    so a machine exports once, not once per data folder.
    """
    if settings.engine.cache_dir is not None:
        return settings.engine.cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "samie-node"


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
    segmenter = load_segmenter(
        settings.segmenter, device, precision, runtime=settings.engine.runtime, cache_dir=engine_cache(settings)
    )
    classifier = load_classifier(settings.classifier.checkpoint, device) if settings.classifier.checkpoint else None
    algorithm = AlgorithmInfo(
        name=f"samie-node SAM-IE {segmenter.name}",
        version=f"samie-node {__version__}; {segmenter.name} {segmenter.version}",
        weights_sha256=segmenter.weights_sha256,
        classifier_sha256=classifier.sha256 if classifier is not None else "",
    )
    LOG.info(
        "models ready in %.1f s: segmenter=%s weights_sha256=%s classifier=%s device=%s precision=%s runtime=%s",
        time.monotonic() - started,
        segmenter.name,
        segmenter.weights_sha256[:16],
        classifier.sha256[:16] if classifier is not None else "none",
        describe_device(device),
        precision or "fp32",
        getattr(getattr(segmenter, "runtime", None), "name", None) or "torch",
    )
    return Models(segmenter, classifier, algorithm, describe_device(device))
