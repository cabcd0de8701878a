"""How good automatic regions are against known lesions: the measures of ``bench/quality.py`` and its tests.

Per image: the Dice of the union of the kept regions with the union of the lesions, which lesions were
found (a kept region with IoU >= 0.5 with the lesion), and how many kept pixels lie outside every lesion.
Per kind of image: the mean Dice over images with a lesion, the lesion recall, the false-positive area
share (kept pixels outside every lesion over all kept pixels) and how many lesion-free images got a region.

How visible each lesion is: the structure filter's own contrast (``structure_features``) measured on the
lesion's true mask, so a benchmark can say which lesions no contrast threshold of a profile could keep
(:func:`recall_by_visibility`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from samie_node.engine.masks import Segmenter
from samie_node.engine.structures import image_maps, structure_features
from samie_node.testing.phantoms import Phantom

#: A lesion counts as found when a kept region overlaps it by at least this IoU.
FOUND_IOU = 0.5

#: The DICOM Modality each kind of phantom would carry (noise-only controls carry none: the image decides).
KIND_MODALITY = {
    "us_mass": "US",
    "skin_lesion": "XC",
    "fundus": "OP",
    "ct_structure": "CT",
    "mr_structure": "MR",
    "us_first_try": "US",
    "noise": "",
}


@dataclass(frozen=True)
class ImageScore:
    """One image's regions against its lesions."""

    kind: str
    lesions: int
    found: int
    regions: int
    dice: float | None  # None for a lesion-free image
    kept_pixels: int
    false_pixels: int
    #: Per lesion: whether a kept region found it, and its visibility (:func:`lesion_contrasts`; empty
    #: when not measured).
    found_each: tuple[bool, ...] = ()
    visibility: tuple[float, ...] = ()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def score_image(
    kind: str, regions: Sequence[np.ndarray], lesions: Sequence[np.ndarray], shape: tuple[int, int]
) -> ImageScore:
    """Score the kept ``regions`` (bool masks) of one image against its ``lesions``."""
    kept = np.zeros(shape, bool)
    for region in regions:
        kept |= region
    truth = np.zeros(shape, bool)
    for lesion in lesions:
        truth |= lesion
    found_each = tuple(any(_iou(region, lesion) >= FOUND_IOU for region in regions) for lesion in lesions)
    total = int(kept.sum()) + int(truth.sum())
    dice = (2.0 * int((kept & truth).sum()) / total if total else 1.0) if lesions else None
    return ImageScore(
        kind,
        len(lesions),
        sum(found_each),
        len(regions),
        dice,
        int(kept.sum()),
        int((kept & ~truth).sum()),
        found_each,
    )


def lesion_contrasts(image: np.ndarray, lesions: Sequence[np.ndarray]) -> tuple[float, ...]:
    """Each lesion's contrast with the ring around it, as the structure filter measures a kept region's
    (``structure_features(...)["contrast"]`` on the true mask): the lesion's visibility to the filter."""
    maps = image_maps(image)
    contrasts = []
    for lesion in lesions:
        features = structure_features(maps.to_work(lesion), maps)
        contrasts.append(features["contrast"] if features else 0.0)
    return tuple(contrasts)


#: The visibility bands of :func:`recall_by_visibility` (contrast of the true mask with its ring).
VISIBILITY_BANDS = ((0.0, 3.0), (3.0, 4.0), (4.0, float("inf")))


def recall_by_visibility(scores: Sequence[ImageScore]) -> dict[str, list[tuple[int, int]]]:
    """Per kind, per band of :data:`VISIBILITY_BANDS`: (lesions found, lesions), from the measured scores."""
    table: dict[str, list[tuple[int, int]]] = {}
    for score in scores:
        if not score.visibility:
            continue
        row = table.setdefault(score.kind, [(0, 0)] * len(VISIBILITY_BANDS))
        for found, contrast in zip(score.found_each, score.visibility, strict=True):
            band = next(i for i, (low, high) in enumerate(VISIBILITY_BANDS) if low <= contrast < high)
            hits, total = row[band]
            row[band] = (hits + int(found), total + 1)
    return table


@dataclass(frozen=True)
class KindSummary:
    """One kind of image over a set."""

    kind: str
    images: int
    lesions: int
    mean_dice: float
    recall: float
    false_positive_share: float
    negatives: int
    negatives_with_region: int

    def meets(self, dice: float = 0.90, recall: float = 0.90, false_share: float = 0.05) -> bool:
        """Whether the kind meets the targets (and no lesion-free image got a region)."""
        return (
            self.mean_dice >= dice
            and self.recall >= recall
            and self.false_positive_share <= false_share
            and self.negatives_with_region == 0
        )


def summarise(scores: Sequence[ImageScore]) -> list[KindSummary]:
    """Per kind, in the order the kinds first appear."""
    kinds = list(dict.fromkeys(score.kind for score in scores))
    summaries = []
    for kind in kinds:
        mine = [s for s in scores if s.kind == kind]
        with_lesion = [s for s in mine if s.lesions]
        negatives = [s for s in mine if not s.lesions]
        kept = sum(s.kept_pixels for s in mine)
        summaries.append(
            KindSummary(
                kind=kind,
                images=len(mine),
                lesions=sum(s.lesions for s in mine),
                mean_dice=float(np.mean([s.dice for s in with_lesion])) if with_lesion else float("nan"),
                recall=sum(s.found for s in mine) / max(1, sum(s.lesions for s in mine)),
                false_positive_share=sum(s.false_pixels for s in mine) / kept if kept else 0.0,
                negatives=len(negatives),
                negatives_with_region=sum(1 for s in negatives if s.regions),
            )
        )
    return summaries


def score_set(
    segmenter: Segmenter, phantoms: Sequence[Phantom], *, box_mode: bool = False, visibility: bool = False
) -> list[ImageScore]:
    """Segment each phantom (automatic mode, or ``box_mode``: one box per true lesion, its bounding box
    grown by 10 %, the ceiling) and score it; with ``visibility`` each lesion's contrast is measured too."""
    scores = []
    for item in phantoms:
        boxes = None
        if box_mode:
            boxes = [np.asarray([_bounds(lesion) for lesion in item.lesions], np.float32).reshape(-1, 4)]
        masks = segmenter.segment([item.image], boxes, modalities=[KIND_MODALITY.get(item.kind, "")])[0].masks
        score = score_image(item.kind, list(masks), item.lesions, item.image.shape[:2])
        if visibility and item.lesions:
            score = replace(score, visibility=lesion_contrasts(item.image, item.lesions))
        scores.append(score)
    return scores


def _bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    dx, dy = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
    rows, cols = mask.shape
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(cols), x1 + dx), min(float(rows), y1 + dy)
