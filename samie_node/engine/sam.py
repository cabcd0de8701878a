"""Segment Anything models behind one small interface: images in, masks with their scores out.

Two models share one implementation, :class:`SamSegmenter`, because LiteMedSAM *is* a
``segment_anything.modeling.Sam`` with a smaller image encoder:

LiteMedSAM (the embedded default)
    The package's TinyViT at 256 px with segment-anything's prompt encoder and mask decoder
    (:mod:`samie_node.engine.weights` loads it). It was trained on min-max normalised images in [0, 1]
    with box prompts, hence ``pixel_mean = 0``, ``pixel_std = 255`` on a min-max stretched 8-bit image,
    and an automatic mode built from *box* proposals (:mod:`samie_node.engine.proposals`).
SAM ViT-B/L/H
    Built from ``segment_anything``'s registry with the operator's checkpoint; automatic mode is
    ``SamAutomaticMaskGenerator`` with a point grid, as in the SAM-IE paper.

Both run the image encoder once per image, on batches of the images of a study, and decode every prompt
of an image against that one embedding. Box prompts given by the caller (or ``segmenter.box``) are
decoded as they are, one mask per box, unfiltered.

LiteMedSAM works on 256 px: every image is resized so its long side is 256 px. Large images lose fine
detail; small ones are enlarged, and their texture with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score, remove_small_regions
from torch.nn.functional import interpolate

from samie_node.config import SegmenterSettings
from samie_node.engine.automatic import Decoder, Embedded, Region, explain_regions, find_structures, profile_name
from samie_node.engine.device import inference_context
from samie_node.engine.masks import MaskSet
from samie_node.engine.structures import segmentation_input
from samie_node.engine.verifier import packaged_verifier, pooled

#: The logit offset of SAM's stability score: IoU of the masks thresholded at -1 and +1.
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class ModelIdentity:
    """What a model is called in the SEG and SR (algorithm name and version) and its weights' hash."""

    name: str
    version: str
    weights_sha256: str


@dataclass(frozen=True)
class Placement:
    """Where a model runs: device, autocast dtype (None for float32), images per encoder call and
    prompts per decoder call (see :func:`samie_node.engine.weights.default_placement`)."""

    device: torch.device
    precision: torch.dtype | None
    encoder_batch_size: int = 1
    decoder_batch_size: int = 2


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's encoder output and the sizes needed to map prompts and masks back to it."""

    features: torch.Tensor  # (1, C, h, w) float32 on the model's device
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamRuntime(Protocol):
    """Runs a ``Sam``'s encoder and box decoder in place of torch's eager modules (same inputs, same outputs).

    :mod:`samie_node.engine.runtime_openvino` provides one; ``None`` in a :class:`SamSegmenter` means the
    reference path, the torch modules themselves.
    """

    name: str

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images to (B, C, h, w) float32 embeddings."""
        ...

    def decode(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One embedding and (K, 4) boxes in model input pixels to :class:`BoxDecoder`'s outputs."""
        ...


class BoxDecoder(torch.nn.Module):
    """A ``Sam``'s prompt encoder and mask decoder for box prompts, one mask per box, as one module.

    The reference decoder path calls it and :mod:`samie_node.engine.runtime_openvino` exports it, so both
    compute the same thing by construction.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w) embedding and (K, 4) boxes to (K, 1, 4h, 4w) mask logits and (K, 1) predicted IoUs."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res, iou = self.mask_decoder(
            image_embeddings=features,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res, iou


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


def check_images(images: Sequence[np.ndarray]) -> None:
    """Refuse anything but non-empty (H, W, 3) uint8 RGB arrays, the one input form of every segmenter."""
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


class SamSegmenter:
    """A Segment Anything model (SAM or LiteMedSAM) held once, on one device, for many images.

    Parameters
    ----------
    model
        The ``Sam`` module, weights loaded, in eval mode on ``placement.device``.
    identity
        Names the model in the SEG and SR and in caches.
    settings
        Mode, configured box, thresholds and mask limits.
    placement
        Device, precision and batch sizes (small batches are fastest on a CPU: README, "Measured here").
    lite
        LiteMedSAM: min-max stretch each image and use box proposals and the structure filter in
        automatic mode (:mod:`samie_node.engine.automatic`); otherwise SAM's own normalisation and
        ``SamAutomaticMaskGenerator``'s point grid.
    runtime
        Runs the encoder and the box decoder instead of the torch modules (LiteMedSAM on a CPU: OpenVINO,
        attached by :func:`samie_node.engine.runtime_openvino.accelerate`); None: the torch modules.
    """

    def __init__(
        self,
        model: Sam,
        identity: ModelIdentity,
        settings: SegmenterSettings,
        placement: Placement,
        *,
        lite: bool,
        runtime: SamRuntime | None = None,
    ) -> None:
        self.model = model
        self.identity = identity
        self.settings = settings
        self.placement = placement
        self.device = placement.device
        self.precision = placement.precision
        self.lite = lite
        self.encoder_batch_size = max(1, placement.encoder_batch_size)
        self.decoder_batch_size = max(1, placement.decoder_batch_size)
        self.predictor = _EmbeddedPredictor(model)
        self.runtime = runtime
        self.box_decoder = BoxDecoder(model)
        #: The learned region check trained on these weights' embedding, if one ships (LiteMedSAM's).
        self.verifier = packaged_verifier(identity.weights_sha256) if lite else None
        self.channels_last = any(
            p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in model.image_encoder.parameters()
        )

    @property
    def name(self) -> str:
        """The model's name (SEG and SR algorithm name)."""
        return self.identity.name

    @property
    def version(self) -> str:
        """The model's version (SEG and SR algorithm version)."""
        return self.identity.version

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file."""
        return self.identity.weights_sha256

    # -- encoder ---------------------------------------------------------------------------------------

    def _model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """One image as the encoder's (1, 3, S, S) input, with its original and resized (H, W).

        SAM: long side resized to the encoder's size, SAM's mean/std (LiteMedSAM: min-max stretch first,
        mean 0, std 255), padded to a square.
        """
        if self.lite:
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
        check_images(images)
        embeddings: list[ImageEmbedding] = []
        for start in range(0, len(images), self.encoder_batch_size):
            inputs = [self._model_input(image) for image in images[start : start + self.encoder_batch_size]]
            batch = torch.cat([item[0] for item in inputs])
            if self.runtime is not None:
                features = self.runtime.encode(batch)
            else:
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

    def _prompt_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) boxes in image pixels to the model's input frame (SAM: the resized, padded image)."""
        transformed: np.ndarray = self.predictor.transform.apply_boxes(boxes, embedding.original_size)
        return transformed

    def _upsample(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """The decoder's (k, 1, 256, 256) float32 logits to (k, 1, H, W) logits at the image's size.

        ``Sam.postprocess_masks`` (bilinear to the encoder's input size, crop the padding, bilinear to the
        image's size), except that a resize to the size a tensor already has is skipped: bilinear
        interpolation to the same size returns its input (LiteMedSAM's logits are already 256 px, and
        images of 256 px need no second resize).
        """
        size = self.model.image_encoder.img_size
        masks = low_res
        if tuple(masks.shape[-2:]) != (size, size):
            masks = interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : embedding.input_size[0], : embedding.input_size[1]]
        if tuple(masks.shape[-2:]) != embedding.original_size:
            masks = interpolate(masks, embedding.original_size, mode="bilinear", align_corners=False)
        return masks

    def _decode(self, embedding: ImageEmbedding, boxes: np.ndarray) -> Iterator[tuple[torch.Tensor, ...]]:
        """Decode (K, 4) boxes in image pixels in chunks; yield (logits (k, H, W) float32, iou (k,)).

        This is ``SamPredictor.predict_torch(boxes=..., multimask_output=False, return_logits=True)``
        with the mask upsampling kept in float32 under autocast, so thresholds and stability scores do not
        see bf16 rounding.
        """
        transformed = self._prompt_boxes(embedding, boxes)
        for start in range(0, len(transformed), self.decoder_batch_size):
            box_torch = torch.as_tensor(
                transformed[start : start + self.decoder_batch_size], dtype=torch.float, device=self.device
            )
            if self.runtime is not None:
                low_res, iou = self.runtime.decode(embedding.features, box_torch)
            else:
                with inference_context(self.device, self.precision):
                    low_res, iou = self.box_decoder(embedding.features, box_torch)
            with torch.inference_mode():
                logits = self._upsample(low_res.float(), embedding)
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

    def _segment_proposals(self, image: np.ndarray, embedding: ImageEmbedding, modality: str) -> MaskSet:
        """LiteMedSAM's automatic mode: proposed boxes, re-prompted tight, only structures kept."""
        profile = self.settings.profiles[profile_name(self.settings.profiles, modality, image)]
        decoder = self._numpy_decoder(embedding)
        embedded = self._embedded(embedding) if self.verifier is not None else None  # nothing to score with
        return find_structures(image, decoder, profile, self.settings.max_masks, embedded)

    def explain(self, image: np.ndarray, modality: str = "") -> tuple[str, list[Region]]:
        """The automatic mode's profile for ``image`` and every candidate mask with its measurements and
        whether it was kept, and each one's refined border (``bench/quality.py`` reports them)."""
        name = profile_name(self.settings.profiles, modality, image)
        profile = self.settings.profiles[name]
        embedding = self.embed([segmentation_input(image)])[0]
        decoder = self._numpy_decoder(embedding)
        return name, explain_regions(image, decoder, profile, self.settings.max_masks, self._embedded(embedding))

    def _embedded(self, embedding: ImageEmbedding) -> Embedded:
        """Masks described on ``embedding`` (:mod:`samie_node.engine.verifier`), scored when there is a
        verifier for these weights."""
        features = embedding.features[0].float().cpu().numpy()
        size = int(self.model.image_encoder.img_size)

        def describe(mask: np.ndarray) -> np.ndarray | None:
            return pooled(features, mask, embedding.input_size, size)

        return Embedded(describe, self.verifier)

    def _numpy_decoder(self, embedding: ImageEmbedding) -> Decoder:
        def decode(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            masks, ious, stabilities = self._decode_all(embedding, boxes)
            return masks.cpu().numpy(), ious.cpu().numpy(), stabilities.cpu().numpy()

        return decode

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

    def segment(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> list[MaskSet]:
        """Segment each image; one :class:`MaskSet` per image, in order.

        Parameters
        ----------
        images
            (H, W, 3) uint8 RGB arrays, any sizes.
        boxes
            Per image, a (K, 4) array of x0, y0, x1, y1 box prompts in pixels (one mask per box, in
            order, unfiltered), or None for the configured mode: ``auto`` finds masks by itself,
            ``box`` uses :meth:`configured_box`.
        modalities
            Per image, the DICOM Modality: it chooses the structure profile of LiteMedSAM's automatic
            mode (``segmenter.profiles``); empty or None: the image decides.

        Raises
        ------
        ValueError
            If an image is not (H, W, 3) uint8 or ``boxes`` or ``modalities`` does not match ``images``.
        """
        count = len(images)
        if boxes is not None and len(boxes) != count:
            raise ValueError(f"{len(boxes)} box arrays for {count} images")
        if modalities is not None and len(modalities) != count:
            raise ValueError(f"{len(modalities)} modalities for {count} images")
        check_images(images)
        automatic = [
            self.lite and self.settings.mode == "auto" and (boxes is None or boxes[i] is None) for i in range(count)
        ]
        encoded = [segmentation_input(image) if auto else image for image, auto in zip(images, automatic, strict=True)]
        results: list[MaskSet] = []
        for index, embedding in enumerate(self.embed(encoded)):
            height, width = embedding.original_size
            image_boxes = boxes[index] if boxes is not None else None
            if image_boxes is None and self.settings.mode == "box":
                image_boxes = self.configured_box(height, width)
            if image_boxes is not None:
                box_array = np.asarray(image_boxes, np.float32).reshape(-1, 4)
                results.append(self._segment_boxes(embedding, box_array))
            elif self.lite:
                modality = modalities[index] if modalities is not None else ""
                results.append(self._segment_proposals(images[index], embedding, modality))
            else:
                results.append(self._segment_points(images[index], embedding))
        return results

    def warm_up(self) -> None:
        """Run one small image through encoder and decoder so the first study does not pay for set-up."""
        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 16:48] = 200
        self.segment([image], [np.array([[8, 8, 56, 56]], np.float32)])
