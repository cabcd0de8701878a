"""Classifiers of (SAM-IE enhanced) images and the checkpoint format that carries them.

Three architectures, all trained here because no pretrained weights can be downloaded:

``resnet50`` and ``swin_t``
    torchvision's, built with ``weights=None``.
``isa_densenet``
    The seed's ISA-DenseNet: a 7x7 stem, three dense blocks (6, 12, 24 layers, growth 32) with 1x1
    transitions, global pooling and a linear head. The seed's listing lost its indentation and so never
    ran as printed; restored, its channel arithmetic holds (64 + 6x32 = 256 -> 128, 128 + 12x32 = 512 ->
    256, 256 + 24x32 = 1024 features), but it is hard-coded to those numbers and feeds the last block's
    un-normalised output to the pooling. Here the channel counts are derived from the configuration, so
    smaller variants for CPUs stay consistent, and a final batch norm and ReLU precede the pooling, as in
    DenseNet.

A checkpoint is one ``torch.save`` of a dict of plain types and tensors, loadable with
``weights_only=True`` (no pickled code runs on load). It carries the architecture and its options, the
class labels with the codes the SR uses, the input mode, the image size and normalisation, the segmenter
and enhancement the model was trained with, the training configuration and metrics. Its SHA-256 is
computed on every load and reported; it is checked against an expected value or a ``<file>.sha256``
sidecar when one is given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from samie_node.engine.device import inference_context
from samie_node.errors import ModelError
from samie_node.files import write_atomically

#: The ``format`` field of checkpoints this module writes and reads.
CHECKPOINT_FORMAT = "samie-node-classifier/1"

Arch = Literal["resnet50", "swin_t", "isa_densenet"]
ARCHITECTURES: tuple[str, ...] = get_args(Arch)
InputMode = Literal["enhanced", "original", "both"]
INPUT_MODES: tuple[str, ...] = get_args(InputMode)


@dataclass(frozen=True)
class ClassLabel:
    """One class: its folder name and the code the SR reports it with.

    Attributes
    ----------
    name
        The label as the dataset names it (the class sub-folder).
    code_value, coding_scheme_designator, code_meaning
        The coded concept (PS3.3 Table 8.8-1), e.g. SNOMED CT or a private ``99...`` scheme.
    """

    name: str
    code_value: str
    coding_scheme_designator: str
    code_meaning: str

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"class label field {key} must be a non-empty string")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassLabel:
        """Build from a checkpoint's or ``labels.json``'s mapping."""
        return cls(
            name=str(data.get("name", "")),
            code_value=str(data.get("code_value", "")),
            coding_scheme_designator=str(data.get("coding_scheme_designator", "")),
            code_meaning=str(data.get("code_meaning", "")),
        )


# -- ISA-DenseNet ------------------------------------------------------------------------------------


class DenseBlock(nn.Module):
    """``num_layers`` BN-ReLU-3x3 conv layers, each fed the concatenation of all earlier outputs."""

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(in_channels + index * growth_rate),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels + index * growth_rate, growth_rate, 3, padding=1, bias=False),
            )
            for index in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class TransitionLayer(nn.Sequential):
    """BN-ReLU-1x1 conv to ``out_channels``, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class ISADenseNet(nn.Module):
    """The seed's ISA-DenseNet with derived channel counts and a final norm (see the module notes).

    Parameters
    ----------
    num_classes
        Outputs of the linear head.
    init_features
        Channels of the stem.
    growth_rate
        Channels each dense layer adds.
    block_layers
        Layers per dense block; each block but the last is followed by a transition that halves the
        channels and the resolution.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        init_features: int = 64,
        growth_rate: int = 32,
        block_layers: Sequence[int] = (6, 12, 24),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, init_features, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels = init_features
        for index, count in enumerate(block_layers):
            block = DenseBlock(channels, growth_rate, count)
            layers.append(block)
            channels = block.out_channels
            if index < len(block_layers) - 1:
                layers.append(TransitionLayer(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return out


def build_model(arch: str, num_classes: int, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an untrained classifier network.

    Parameters
    ----------
    arch
        ``resnet50``, ``swin_t`` or ``isa_densenet``.
    num_classes
        Number of outputs.
    options
        Keyword arguments of :class:`ISADenseNet` (``init_features``, ``growth_rate``, ``block_layers``);
        the torchvision models take none.

    Raises
    ------
    ModelError
        If the architecture is unknown or the options do not apply to it.
    """
    options = dict(options or {})
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch == "isa_densenet":
        try:
            return ISADenseNet(num_classes, **options)
        except TypeError as exc:
            raise ModelError(f"invalid isa_densenet options {sorted(options)}") from exc
    if arch in ("resnet50", "swin_t"):
        if options:
            raise ModelError(f"{arch} takes no architecture options, got {sorted(options)}")
        builder = getattr(torchvision.models, arch)
        model: nn.Module = builder(weights=None, num_classes=num_classes)
        return model
    raise ModelError(f"unknown classifier architecture {arch!r}; expected one of {ARCHITECTURES}")


# -- preprocessing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How an 8-bit RGB image becomes a network input: square resize, scale to [0, 1], normalise.

    The mean and standard deviation are measured on the training inputs (no ImageNet statistics
    apply: nothing here was pretrained on ImageNet).
    """

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 to (S, S, 3) uint8, area-averaged when shrinking."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("classifier inputs must be (H, W, 3) uint8 arrays")
        if image.shape[:2] == (self.image_size, self.image_size):
            return image
        shrinking = max(image.shape[:2]) > self.image_size
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized: np.ndarray = cv2.resize(image, (self.image_size, self.image_size), interpolation=interpolation)
        return resized

    def tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """A normalised (N, 3, S, S) float32 tensor of ``images``."""
        stacked = np.stack([self.resize(image) for image in images]).astype(np.float32) / 255.0
        tensor = torch.from_numpy(stacked).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((tensor - mean) / std).contiguous()


# -- checkpoints -------------------------------------------------------------------------------------


@dataclass
class CheckpointContent:
    """Everything a checkpoint holds besides the weights."""

    arch: str
    labels: list[ClassLabel]
    input_mode: str
    preprocessing: Preprocessing
    arch_options: dict[str, Any] = field(default_factory=dict)
    enhancement: str = "sam_ie"
    segmenter: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    name: str = ""

    def to_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The dict ``torch.save`` writes: plain types and tensors only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "arch_options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch_options.items()},
            "labels": [asdict(label) for label in self.labels],
            "input_mode": self.input_mode,
            "image_size": self.preprocessing.image_size,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "enhancement": self.enhancement,
            "segmenter": dict(self.segmenter),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "version": self.version,
            "name": self.name,
            "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointContent:
        """Validate and read back :meth:`to_dict`'s output.

        Raises
        ------
        ModelError
            If a field is missing or has the wrong type.
        """
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"not a samie-node classifier checkpoint (format {data.get('format')!r})")
        try:
            labels = [ClassLabel.from_dict(item) for item in data["labels"]]
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError("mean and std need three values, std positive")
            content = cls(
                arch=str(data["arch"]),
                labels=labels,
                input_mode=str(data["input_mode"]),
                preprocessing=Preprocessing(
                    image_size=int(data["image_size"]),
                    mean=(mean[0], mean[1], mean[2]),
                    std=(std[0], std[1], std[2]),
                ),
                arch_options=dict(data.get("arch_options", {})),
                enhancement=str(data.get("enhancement", "sam_ie")),
                segmenter={str(k): str(v) for k, v in dict(data.get("segmenter", {})).items()},
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                version=str(data.get("version", "")),
                name=str(data.get("name", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"classifier checkpoint is incomplete or malformed ({exc})") from exc
        if content.input_mode not in INPUT_MODES:
            raise ModelError(f"classifier checkpoint has unknown input mode {content.input_mode!r}")
        if content.preprocessing.image_size < 16:
            raise ModelError("classifier checkpoint has an image size below 16 px")
        return content


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    """``model.pt`` -> ``model.pt.sha256``, in ``sha256sum`` format."""
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, model: nn.Module, content: CheckpointContent) -> str:
    """Write a checkpoint atomically, with its ``.sha256`` sidecar; return the SHA-256.

    The file is written to a temporary name in the same folder and renamed, so a reader never sees a
    half-written checkpoint.
    """
    state = content.to_dict(model.state_dict())
    write_atomically(path, lambda stream: torch.save(state, stream))
    digest = file_sha256(path)
    write_atomically(sidecar_path(path), f"{digest}  {path.name}\n".encode("ascii"))
    return digest


# -- the classifier ----------------------------------------------------------------------------------


class Classifier:
    """A trained classifier, loaded once on one device.

    Attributes
    ----------
    labels
        The classes, in output order.
    arch
        The architecture name.
    sha256
        SHA-256 of the checkpoint file it was loaded from.
    version
        The version string the checkpoint records (samie-node version and training date).
    name
        The model's name as the checkpoint gives it (the SR's algorithm name for the classification),
        else ``<arch> classifier``.
    input_mode
        ``enhanced``, ``original`` or ``both`` (the two predictions averaged).
    content
        Everything else the checkpoint says (training set-up, metrics, segmenter).
    """

    def __init__(
        self,
        model: nn.Module,
        content: CheckpointContent,
        *,
        sha256: str,
        device: torch.device,
        precision: torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model.to(device).eval()
        self.content = content
        self.labels = content.labels
        self.arch = content.arch
        self.input_mode = content.input_mode
        self.sha256 = sha256
        self.version = content.version or f"{content.arch} {sha256[:12]}"
        self.name = content.name or f"{content.arch} classifier"
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    def _probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = self.content.preprocessing.tensor(images[start : start + self.batch_size]).to(self.device)
            with inference_context(self.device, self.precision):
                logits = self.model(batch)
            outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(outputs).astype(np.float32)

    def predict(self, originals: Sequence[np.ndarray], enhanced: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities, (N, n_classes) float32, rows summing to 1.

        Parameters
        ----------
        originals
            The prepared (H, W, 3) uint8 images; may be empty when the input mode is ``enhanced``.
        enhanced
            Their SAM-IE images, in the same order; may be empty when the input mode is ``original``.

        Raises
        ------
        ValueError
            If the inputs the input mode needs are missing or of different lengths.
        """
        if self.input_mode == "original":
            chosen: list[Sequence[np.ndarray]] = [originals]
        elif self.input_mode == "enhanced":
            chosen = [enhanced]
        else:
            if len(originals) != len(enhanced):
                raise ValueError(f"{len(originals)} originals but {len(enhanced)} enhanced images")
            chosen = [originals, enhanced]
        count = len(chosen[0])
        if count == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        probabilities = np.mean([self._probabilities(images) for images in chosen], axis=0)
        result: np.ndarray = probabilities.astype(np.float32)
        return result


def load_classifier(
    path: Path,
    device: torch.device,
    *,
    expected_sha256: str | None = None,
    precision: torch.dtype | None = None,
) -> Classifier:
    """Load a classifier checkpoint written by ``samie-node train``.

    Parameters
    ----------
    path
        The checkpoint file.
    device, precision
        Where it runs, and the autocast dtype (None: float32).
    expected_sha256
        The hash the file must have; without it the ``<file>.sha256`` sidecar is checked when present.

    Raises
    ------
    ModelError
        If the file is missing or unreadable, its hash differs from the expected one, or its content does
        not describe a model its weights fit.
    """
    try:
        digest = file_sha256(path)
    except FileNotFoundError as exc:
        raise ModelError(f"classifier checkpoint not found: {path}") from exc
    except OSError as exc:
        raise ModelError(f"classifier checkpoint cannot be read: {path} ({type(exc).__name__})") from exc
    expected = expected_sha256
    sidecar = sidecar_path(path)
    if expected is None and sidecar.is_file():
        words = sidecar.read_text(encoding="ascii", errors="replace").split()
        expected = words[0] if words else ""
    if expected is not None and expected.lower() != digest:
        raise ModelError(f"classifier checkpoint {path.name} has SHA-256 {digest}, expected {expected}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors: the file is not a usable checkpoint
        raise ModelError(f"{path.name} is not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path.name} does not hold a samie-node classifier checkpoint")
    content = CheckpointContent.from_dict(data)
    model = build_model(content.arch, len(content.labels), content.arch_options)
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise ModelError(f"{path.name} has no weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{path.name}: the weights do not match a {content.arch} with {len(content.labels)} classes"
        ) from exc
    return Classifier(model, content, sha256=digest, device=device, precision=precision)
