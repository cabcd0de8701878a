"""Shared pieces of the engine tests (prepare, segment, enhance, classify, train), imported explicitly.

Loading LiteMedSAM costs about a second and its first run a few more, so test modules share one
instance per module through :func:`litemedsam_segmenter`. :class:`ThresholdSegmenter` is a small, honest
stand-in for a Segment Anything model where a test is about what happens *after* segmentation (training,
caching): it finds dark and bright blobs by Otsu thresholding in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samie_node.config import SegmenterSettings
from samie_node.engine.masks import MaskSet
from samie_node.engine.sam import Placement, SamSegmenter
from samie_node.engine.weights import load_litemedsam

CPU = torch.device("cpu")


def litemedsam_segmenter(**settings: object) -> SamSegmenter:
    """LiteMedSAM with the real bundled weights, float32 on the CPU (deterministic across machines)."""
    return load_litemedsam(SegmenterSettings(**settings), Placement(CPU, None))  # type: ignore[arg-type]


def pydicom_file(name: str) -> Path:
    """A file bundled with pydicom (only the bundled ones: nothing may be downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not bundled")
    return Path(str(path))


def read_testdata(name: str) -> pydicom.Dataset:
    """Read a bundled pydicom test file."""
    return pydicom.dcmread(pydicom_file(name))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """(1, 4) x0, y0, x1, y1 box around a boolean mask, in the segmenter's pixel convention."""
    rows, cols = np.nonzero(mask)
    return np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)


class ThresholdSegmenter:
    """A fast stand-in segmenter: Otsu threshold of the smoothed grey image, one mask per blob.

    Blobs touching the image edge are background and skipped. Scores are fixed (IoU 0.9, stability
    0.95), so the enhancement code paths see realistic values.
    """

    name = "threshold-test-segmenter"
    version = "1"
    weights_sha256 = "0" * 64

    def __init__(self) -> None:
        self.calls = 0

    def segment(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> list[MaskSet]:
        self.calls += len(images)
        results = []
        for image in images:
            grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (0, 0), 2.0)
            _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            masks = []
            height, width = grey.shape
            for index in range(1, count):
                x, y, w, h, area = stats[index]
                if area >= 20 and x > 0 and y > 0 and x + w < width and y + h < height:
                    masks.append(labels == index)
            if not masks:
                results.append(MaskSet.empty(height, width))
                continue
            results.append(
                MaskSet(
                    masks=np.stack(masks),
                    predicted_iou=np.full(len(masks), 0.9, np.float32),
                    stability_score=np.full(len(masks), 0.95, np.float32),
                )
            )
        return results


def small_sam(seed: int = 0, *, embed_dim: int = 64, image_size: int = 64) -> Sam:
    """A SAM-shaped model small enough for CPU tests, random weights.

    The default encoder takes 64 px (4x4 patches of 16); ``image_size=1024`` gives a ViT-B-*shaped* model,
    MedSAM's sizes with few channels: 1024 px in, a 64 x 64 embedding, 256 x 256 masks out.
    """
    torch.manual_seed(seed)
    patch, prompt_dim = 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    ).eval()
