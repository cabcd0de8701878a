"""MedSAM (a SAM ViT-B fine-tuned on medical images) with its own inference, not ``SamPredictor``'s.

MedSAM was trained and published with a preprocessing of its own (bowang-lab/MedSAM,
``MedSAM_Inference.py``); fed through SAM's instead (long side to 1024, ImageNet mean/std, padding) the
same weights see images unlike any they were trained on. So every step here follows the published
script:

1. the (H, W, 3) 8-bit image is stretched to 1024 x 1024, aspect ratio *not* kept, by scikit-image's
   ``resize`` (cubic spline, ``order=3``, ``preserve_range``, ``anti_aliasing``) and cast to uint8 by
   truncation, as ``.astype(np.uint8)`` does;
2. min-max scaled to [0, 1] (divisor at least 1e-8); no mean/std normalisation, no padding;
3. the image encoder gives a (1, 256, 64, 64) embedding;
4. each box (x0, y0, x1, y1 in image pixels) is scaled by 1024/W and 1024/H, encoded by the prompt
   encoder, and the mask decoder gives one (``multimask_output=False``) 256 x 256 logit map;
5. sigmoid, then bilinear upsampling (``align_corners=False``) straight to (H, W), then > 0.5.

Step 1 resizes each colour channel on its own (once when the channels are equal, as for every grey
image): scikit-image's call on the 3-channel array spends most of its time interpolating across the
three channels, and gives the same values to 1e-12 (:func:`medsam_resize` says where the 8-bit results
can differ by one grey level; ``tests/test_medsam.py`` compares them with the literal published call).
OpenCV's ``INTER_CUBIC`` is a different interpolant (Keys cubic convolution, no anti-aliasing): it
differed from scikit-image by up to 34 grey levels on a disc phantom, so it is not used.

Step 5 is why this segmenter hands the base class the *logit of the upsampled probabilities*: the base
class thresholds logits at 0 and scores stability at +-1, and ``logit(p) > 0`` exactly when ``p > 0.5``,
so masks are MedSAM's, while SAM's order (upsample logits, then threshold) would move borders slightly.

CT and MR windowing (MedSAM's ``pre_CT_MR.py``) happens before the 8-bit image exists, in
:func:`samie_node.engine.prepare.prepare_dataset` with ``windowing="medsam"``.

Automatic mode: MedSAM, like LiteMedSAM, was trained with box prompts only, so it shares LiteMedSAM's
box proposals and structure filter (:mod:`samie_node.engine.automatic`) rather than SAM's point grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the name every PyTorch reader knows
from skimage.transform import resize

from samie_node.engine.sam import ImageEmbedding, SamSegmenter

#: MedSAM's input side: every image is stretched to this square.
MEDSAM_SIZE = 1024


#: Resized values this close to a whole number count as that number before the cast (see :func:`medsam_resize`).
_WHOLE = 1e-9


def _resize_channel(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    resized: np.ndarray = resize(  # type: ignore[no-untyped-call]
        channel, (MEDSAM_SIZE, MEDSAM_SIZE), order=3, preserve_range=True, anti_aliasing=True, clip=False
    )
    cast: np.ndarray = np.floor(np.clip(resized, low, high) + _WHOLE).astype(np.uint8)
    return cast


def medsam_resize(image: np.ndarray) -> np.ndarray:
    """Stretch an (H, W, 3) uint8 image to (1024, 1024, 3) uint8 as ``MedSAM_Inference.py`` does.

    One 2-D resize per distinct channel instead of one 3-D call over (H, W, 3): the same values to 1e-12
    (the spline along an axis that is not resized reproduces its samples), in a tenth of the time or
    less. The spline's overshoot is clipped to the range of the whole image, as the 3-D call clips it.
    The published cast truncates, so where the exact value is a whole number (a flat region) float
    noise of either call decides between n and n - 1; here such values count as n. The result is the
    published one except for those pixels, by one grey level.
    """
    low, high = float(image.min()), float(image.max())
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
        grey = _resize_channel(image[..., 0], low, high)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.stack([_resize_channel(image[..., channel], low, high) for channel in range(3)], axis=2)


def medsam_input(image: np.ndarray) -> np.ndarray:
    """The encoder's input for one (H, W, 3) uint8 image: (1024, 1024, 3) float32 in [0, 1]."""
    resized = medsam_resize(image).astype(np.float64)
    low = resized.min()
    scaled: np.ndarray = (resized - low) / np.clip(resized.max() - low, 1e-8, None)
    return scaled.astype(np.float32)


def medsam_boxes(boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """(K, 4) x0, y0, x1, y1 boxes in image pixels to MedSAM's 1024 x 1024 frame (each axis on its own)."""
    height, width = original_size
    scale = np.array([width, height, width, height], np.float64)
    scaled: np.ndarray = (np.asarray(boxes, np.float64) / scale * MEDSAM_SIZE).astype(np.float32)
    return scaled


class MedSamSegmenter(SamSegmenter):
    """MedSAM: a ``Sam`` ViT-B with MedSAM's input, box scaling and mask upsampling.

    Constructed like :class:`SamSegmenter` with ``lite=True``, which here means what it means for
    LiteMedSAM: box proposals in automatic mode. Batching, box prompts, proposals, filtering and the
    configured box are the base class's.
    """

    def _model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        tensor = torch.as_tensor(medsam_input(image), device=self.device).permute(2, 0, 1).contiguous()[None]
        return tensor, (int(image.shape[0]), int(image.shape[1])), (MEDSAM_SIZE, MEDSAM_SIZE)

    def _prompt_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        return medsam_boxes(boxes, embedding.original_size)

    def _upsample(self, low_res: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        probabilities = F.interpolate(
            torch.sigmoid(low_res), size=embedding.original_size, mode="bilinear", align_corners=False
        )
        logits: torch.Tensor = torch.logit(probabilities)
        return logits
