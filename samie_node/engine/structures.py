"""Is a mask a structure? Label-free measurements of a region against its surroundings and its border.

LiteMedSAM answers every box with a mask, whether the box holds a lesion or plain speckle, so the
automatic mode decides afterwards which masks to keep. A radiologist calls a region a structure when it
differs from what surrounds it and its border lies where the image has an edge; these are the two things
measured here, on a copy of the image at ``work_size`` px (:func:`image_maps`):

contrast
    The difference of the mean inside the region and in a ring around it, over their pooled standard
    deviation, on every map (luma, for colour images CIE Lab a* and b*, and a local-contrast copy); the
    best map counts. ``z`` is the same effect size times the square root of the number of independent
    samples inside: a small blob of noise has a large effect size by chance and a small ``z``.
edge, edge_local
    The mean gradient magnitude along the region's border against the image's typical gradient, and
    against the gradient just inside and outside it (high for a step edge, about 1 for noise).
    ``edge_fine`` is the median gradient along the border at the finest scale (``STAT_SIGMAS[0]``) against
    the image's typical one there: a structure's border is a step all the way round, while a smooth
    swell of tissue or texture, which has contrast and a gradient at coarse scales, has none.
shape
    Solidity, thickness (largest inscribed radius over the equivalent radius), how much of the border
    runs along the image edge or along a dark background (a field of view, the air around a body), and
    ``span``: the larger share of the image's width or height the region's bounding box covers (a tissue
    layer runs across the image; a lesion does not).

The thresholds live in :class:`samie_node.config.StructureProfile`, one per modality family. A region
that stands out clearly (:func:`distinct`: high contrast and ``z`` together) may be elongated and needs less
of LiteMedSAM's own scores, where a profile says so (ultrasound); one that stands out far more
(:func:`stark`, CT) needs none of the border tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from samie_node.profiles import StructureProfile

#: Smoothing scales (px at work size) of the statistics maps; a region is measured at the one that
#: matches its size, so speckle averages out over large regions and small ones keep their detail.
STAT_SIGMAS = (1.0, 2.0, 4.0, 8.0)
STAT_SCALE = 0.2

#: Long side of the copy every measurement is made on.
WORK_SIZE = 256
#: Thinner dark or bright lines (px at work size: hair, vessels, speckle spikes) are removed before measuring.
LINE_WIDTH = 7
#: Surround sigma of the local-contrast map, as a fraction of the work size.
HIGHPASS = 0.06
#: Fine-detail level (:func:`noise_index`) above which a grey image counts as speckled (ultrasound).
SPECKLE_INDEX = 0.06


@dataclass
class Maps:
    """One image prepared for measuring regions, at work size.

    Attributes
    ----------
    scale
        Work pixels per image pixel.
    channels, names
        Cleaned float32 maps (luma first) and their names.
    smooth
        sigma -> the channels smoothed at sigma.
    gradient
        sigma -> combined normalised gradient magnitude, 3x3 max-filtered.
    typical
        sigma -> median gradient over the foreground interior.
    foreground
        Pixels that are not a dark, uniform background touching the image edge.
    """

    scale: float
    channels: list[np.ndarray]
    names: list[str]
    smooth: dict[float, list[np.ndarray]]
    gradient: dict[float, np.ndarray]
    typical: dict[float, float]
    foreground: np.ndarray
    has_background: bool

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) at work size."""
        rows, cols = self.foreground.shape
        return int(rows), int(cols)

    def to_work(self, mask: np.ndarray) -> np.ndarray:
        """An image-size bool ``mask`` at work size."""
        return work_mask(mask)


def work_size(height: int, width: int) -> tuple[int, int]:
    """(columns, rows) of the work-size copy of a ``height`` x ``width`` image."""
    scale = WORK_SIZE / max(height, width)
    return max(8, round(width * scale)), max(8, round(height * scale))


def work_mask(mask: np.ndarray) -> np.ndarray:
    """An image-size bool ``mask`` at work size (area-averaged, then cut at one half)."""
    resized: np.ndarray = cv2.resize(mask.astype(np.float32), work_size(*mask.shape), interpolation=cv2.INTER_AREA)
    return resized >= 0.5


def is_grey(image: np.ndarray) -> bool:
    """True when the three channels of an (H, W, 3) image are equal."""
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]))


def noise_index(image: np.ndarray) -> float:
    """Median absolute fine detail (image minus its sigma-1 blur, at 256 px) over the 5-95 % grey range.

    High on ultrasound speckle, low on CT, MR and photographs: it tells a speckled image when the
    modality does not.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    scale = 256 / max(grey.shape)
    size = (max(8, round(grey.shape[1] * scale)), max(8, round(grey.shape[0] * scale)))
    grey = np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    foreground = cv2.GaussianBlur(grey, (0, 0), 2.0) > 10
    if foreground.mean() < 0.1:
        foreground[:] = True
    spread = float(np.subtract(*np.percentile(grey[foreground], [95, 5]))) + 1.0
    return float(np.median(np.abs(detail[foreground])) / spread)


def segmentation_input(image: np.ndarray) -> np.ndarray:
    """The picture LiteMedSAM encodes in automatic mode.

    Colour photographs: a grey closing removes dark lines thinner than 2.5 % of the long side (hair over
    a skin lesion, vessels over the optic disc), which otherwise split the mask. Speckled grey images: a
    light Gaussian (sigma 1.5 px). Other images unchanged.
    """
    if not is_grey(image):
        size = max(3, round(0.025 * max(image.shape[:2])) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        closed: np.ndarray = cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel)
        return closed
    if noise_index(image) >= SPECKLE_INDEX:
        blurred: np.ndarray = cv2.GaussianBlur(image, (0, 0), 1.5)
        return blurred
    return image


def _disk(radius: int) -> np.ndarray:
    disk: np.ndarray = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return disk


def _foreground(luma: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pixels that are not a dark, uniform background touching the image edge, and whether there is one."""
    blurred = cv2.GaussianBlur(luma, (0, 0), 2.0)
    levels = np.clip(blurred, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = (blurred <= float(np.clip(0.4 * otsu, 6, 30))).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0])
    edge_cover = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]).mean()
    everywhere = np.ones_like(luma, bool)
    # A background leaves most of the picture to the subject (a fundus' field of view, a body in its
    # air); a dark image whose "background" would be nearly all of it is dark tissue, not air.
    if edge_cover < 0.25 or not 0.05 <= background.mean() <= 0.8 or float(luma[background].std()) > 12:
        return everywhere, False
    return ~background, True


def _fill_background(channels: list[np.ndarray], foreground: np.ndarray) -> list[np.ndarray]:
    """Give background pixels the nearest foreground value, so the edge of a field of view or of a body
    makes no gradient and no threshold region of its own."""
    core = cv2.erode(foreground.astype(np.uint8), _disk(3)).astype(bool)
    if not core.any():
        core = foreground
    _, nearest = cv2.distanceTransformWithLabels(
        core.astype(np.uint8) ^ 1, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    rows, cols = np.nonzero(core)
    lookup_r = np.zeros(nearest.max() + 1, np.int32)
    lookup_c = np.zeros(nearest.max() + 1, np.int32)
    lookup_r[nearest[core]] = rows
    lookup_c[nearest[core]] = cols
    source_r, source_c = lookup_r[nearest], lookup_c[nearest]
    return [c[source_r, source_c] for c in channels]


def image_maps(image: np.ndarray) -> Maps:
    """Everything :func:`structure_features` measures on, computed once per image."""
    height, width = image.shape[:2]
    scale = WORK_SIZE / max(height, width)
    small = cv2.resize(image, work_size(height, width), interpolation=cv2.INTER_AREA)
    luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    channels, names = [luma], ["L"]
    if not is_grey(image):
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
        channels += [lab[:, :, 1], lab[:, :, 2]]
        names += ["a", "b"]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (LINE_WIDTH, LINE_WIDTH))
    cleaned = [cv2.morphologyEx(cv2.morphologyEx(c, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel) for c in channels]
    foreground, has_background = _foreground(luma)
    if has_background:
        cleaned = _fill_background(cleaned, foreground)
    surround = HIGHPASS * WORK_SIZE
    cleaned.append(cleaned[0] - cv2.GaussianBlur(cleaned[0], (0, 0), surround) + 128.0)
    names.append("H")
    inner = foreground
    if has_background:
        inner = cv2.erode(foreground.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        inner = inner if inner.any() else foreground
    spreads = [float(np.subtract(*np.percentile(c[foreground], [95, 5]))) + 1.0 for c in cleaned]
    smooth: dict[float, list[np.ndarray]] = {}
    gradient: dict[float, np.ndarray] = {}
    typical: dict[float, float] = {}
    for sigma in STAT_SIGMAS:
        smooth[sigma] = [cv2.GaussianBlur(c, (0, 0), sigma) for c in cleaned]
        magnitudes = [
            np.hypot(cv2.Sobel(s, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(s, cv2.CV_32F, 0, 1, ksize=3)) / spread
            for s, spread in zip(smooth[sigma], spreads, strict=True)
        ]
        gradient[sigma] = cv2.dilate(np.max(np.stack(magnitudes), axis=0), np.ones((3, 3), np.uint8))
        typical[sigma] = max(float(np.median(gradient[sigma][inner])), 1e-4)
    return Maps(scale, cleaned, names, smooth, gradient, typical, foreground, has_background)


def _stat_sigma(radius: float) -> float:
    wanted = float(np.clip(STAT_SCALE * radius, STAT_SIGMAS[0], STAT_SIGMAS[-1]))
    return min(STAT_SIGMAS, key=lambda s: abs(np.log(s / wanted)))


@dataclass(frozen=True)
class _Window:
    """A region's neighbourhood cut out of the work-size maps, with its inside, ring and border."""

    y0: int
    y1: int
    x0: int
    x1: int
    crop: np.ndarray  # uint8 mask
    inside: np.ndarray
    inside_core: np.ndarray
    ring: np.ndarray
    background_ring: float
    sigma: float


def _window(mask: np.ndarray, maps: Maps, area: int, ys: np.ndarray, xs: np.ndarray) -> _Window:
    rows, cols = mask.shape
    radius = float(np.sqrt(area / np.pi))
    sigma = _stat_sigma(radius)
    gap = round(sigma) + 1
    ring_width = int(np.clip(round(0.4 * radius), 3, 24))
    margin = ring_width + gap + 2
    y0, y1 = max(0, int(ys.min()) - margin), min(rows, int(ys.max()) + margin + 1)
    x0, x1 = max(0, int(xs.min()) - margin), min(cols, int(xs.max()) + margin + 1)
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    ring = cv2.dilate(crop, _disk(ring_width + gap)).astype(bool) & ~cv2.dilate(crop, _disk(gap)).astype(bool)
    inside = cv2.erode(crop, _disk(max(1, gap - 1))).astype(bool)
    if inside.sum() < 4:
        inside = crop.astype(bool)
    ring_fg = ring & maps.foreground[y0:y1, x0:x1]
    background_ring = 1.0 - ring_fg.sum() / max(1, ring.sum())
    inside_core = cv2.erode(crop, _disk(gap + 1)).astype(bool)
    return _Window(
        y0, y1, x0, x1, crop, inside, inside_core, ring_fg if ring_fg.sum() >= 8 else ring, background_ring, sigma
    )


def _contrasts(window: _Window, maps: Maps) -> list[float]:
    contrasts = []
    for values_full in maps.smooth[window.sigma]:
        values = values_full[window.y0 : window.y1, window.x0 : window.x1]
        inside, ring = values[window.inside], values[window.ring]
        if ring.size < 4:
            contrasts.append(0.0)
            continue
        pooled = np.sqrt(0.5 * (inside.var() + ring.var())) + 0.5
        contrasts.append(abs(float(inside.mean() - ring.mean())) / pooled)
    return contrasts


def _border(window: _Window, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The region's border pixels away from the image edge, and the share of its perimeter on the edge."""
    rows, cols = shape
    crop = window.crop
    border = crop.astype(bool) & ~cv2.erode(crop, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE).astype(
        bool
    )
    on_edge = np.zeros_like(border)
    on_edge[0, :] |= window.y0 == 0
    on_edge[-1, :] |= window.y1 == rows
    on_edge[:, 0] |= window.x0 == 0
    on_edge[:, -1] |= window.x1 == cols
    edge_pixels = int((crop.astype(bool) & on_edge).sum())
    inner_border = border & ~on_edge
    return inner_border, edge_pixels / max(1, int(inner_border.sum()) + edge_pixels)


def span(mask: np.ndarray) -> float:
    """The larger share of the image's width or height that a non-empty bool ``mask``'s bounding box covers."""
    rows, cols = mask.shape
    ys, xs = np.nonzero(mask)
    return float(max((int(xs.max()) - int(xs.min()) + 1) / cols, (int(ys.max()) - int(ys.min()) + 1) / rows))


def structure_features(mask: np.ndarray, maps: Maps) -> dict[str, float] | None:
    """Label-free features of a work-size bool ``mask`` (see the module notes); None when it is empty."""
    area = int(mask.sum())
    if area < 4:
        return None
    rows, cols = mask.shape
    ys, xs = np.nonzero(mask)
    window = _window(mask, maps, area, ys, xs)
    contrasts = _contrasts(window, maps)
    inner_border, edge_share = _border(window, (rows, cols))
    gradient = maps.gradient[window.sigma][window.y0 : window.y1, window.x0 : window.x1]
    typical = maps.typical[window.sigma]
    border_gradient = float(np.mean(gradient[inner_border])) if inner_border.any() else 0.0
    fine = maps.gradient[STAT_SIGMAS[0]][window.y0 : window.y1, window.x0 : window.x1][inner_border]
    edge_fine = float(np.median(fine)) / maps.typical[STAT_SIGMAS[0]] if fine.size else 0.0
    away = gradient[window.inside_core | window.ring]
    distance = cv2.distanceTransform(np.pad(window.crop, 1), cv2.DIST_L2, 5)
    contours, _ = cv2.findContours(window.crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = sum(cv2.contourArea(cv2.convexHull(c)) for c in contours)
    sides = int(ys.min() == 0) + int(ys.max() == rows - 1) + int(xs.min() == 0) + int(xs.max() == cols - 1)
    in_foreground = int(np.logical_and(mask, maps.foreground).sum())
    independent = window.inside.sum() / (4.0 * np.pi * window.sigma**2 + 1.0)
    return {
        "area": area / (rows * cols),
        "fg_fraction": in_foreground / max(1, int(maps.foreground.sum())),
        "fg_share": in_foreground / area,
        "contrast": float(max(contrasts)),
        "z": float(max(contrasts) * np.sqrt(independent)),
        "edge": border_gradient / typical,
        "edge_local": border_gradient / ((float(np.median(away)) if away.size else 0.0) + 0.05 * typical),
        "edge_fine": edge_fine,
        "thickness": float(distance.max()) / max(float(np.sqrt(area / np.pi)), 1e-3),
        "solidity": float(area / max(hull_area, area)) if hull_area > 0 else 1.0,
        "edge_share": edge_share,
        "background_ring": float(window.background_ring),
        "sides": float(sides),
        "span": span(mask),
    }


#: A kept region's border moves at most this share of its equivalent radius (at least 2 px) in or out ...
BORDER_BAND = 0.2
#: ... onto the profile's ``border_level`` (0.5: halfway) of the map smoothed at this sigma (px at work size).
BORDER_SIGMA = 1.0


def refine_border(mask: np.ndarray, maps: Maps, level: float = 0.5) -> np.ndarray:
    """``mask`` (bool, image size) with its border put where the image crosses ``level`` of the way from
    the region's ring to its inside (0.5: halfway).

    LiteMedSAM's masks run over soft edges, so a kept region is often larger than the structure. Within a
    band of ``BORDER_BAND`` times the region's equivalent radius on both sides of the decoded border, a pixel
    belongs to the region when the map on which the region contrasts most (smoothed at ``BORDER_SIGMA``) is
    past ``level`` of the way from the ring's mean to the inside's: at 0.5, the half-contrast level where a
    blurred step edge lies; above 0.5, a tighter border. The result may have
    islands and holes (the caller keeps the largest piece, filled); the decoded mask comes back unchanged
    when the region is too small to measure or has no ring.
    """
    work = maps.to_work(mask)
    area = int(work.sum())
    if area < 16:
        return mask
    ys, xs = np.nonzero(work)
    window = _window(work, maps, area, ys, xs)
    if int(window.ring.sum()) < 4:
        return mask
    index = int(np.argmax(_contrasts(window, maps)))
    values = maps.smooth[window.sigma][index][window.y0 : window.y1, window.x0 : window.x1]
    inside_mean, ring_mean = float(values[window.inside].mean()), float(values[window.ring].mean())
    height, width = mask.shape
    field = cv2.resize(maps.smooth[BORDER_SIGMA][index], (width, height), interpolation=cv2.INTER_LINEAR)
    radius = max(2, round(BORDER_BAND * float(np.sqrt(mask.sum() / np.pi))))
    crop = mask.astype(np.uint8)
    band = cv2.dilate(crop, _disk(radius)).astype(bool) & ~cv2.erode(crop, _disk(radius)).astype(bool)
    cut = ring_mean + level * (inside_mean - ring_mean)
    nearer_inside = field >= cut if inside_mean > ring_mean else field <= cut
    moved: np.ndarray = (mask & ~band) | (band & nearer_inside)
    return moved


#: Looser gates for proposals, measured on thresholded regions before any decoding.
CANDIDATE_MIN_CONTRAST = 1.5
CANDIDATE_MIN_EDGE = 1.0
#: Fixed shape limits: a mask on more than this share of its perimeter on the image edge, or with more
#: than this share of its ring in the dark background, is a field of view or a body outline; so is one
#: whose ``span`` is 1 (it runs from one image edge to the opposite one), whatever the profile's ``max_span``.
MAX_EDGE_SHARE = 0.4
MAX_BACKGROUND_RING = 0.5
MIN_FOREGROUND_SHARE = 0.9


def distinct(features: dict[str, float], profile: StructureProfile) -> bool:
    """The region stands out clearly (the profile's ``distinct_contrast`` and ``distinct_z``): it may be
    elongated, and it needs less of LiteMedSAM's own scores."""
    return features["contrast"] >= profile.distinct_contrast and features["z"] >= profile.distinct_z


def stark(features: dict[str, float], profile: StructureProfile) -> bool:
    """The region stands out so far (the profile's ``stark_contrast``, and ``z`` at least twice ``min_z``)
    that the border tests are not asked."""
    return 0.0 < profile.stark_contrast <= features["contrast"] and features["z"] >= 2.0 * profile.min_z


def passes(
    features: dict[str, float] | None,
    profile: StructureProfile,
    pred_iou: float = 1.0,
    stability: float = 1.0,
    *,
    candidate: bool = False,
    border: bool = True,
    sure: bool = True,
) -> bool:
    """The structure filter; ``candidate`` applies the looser gate of proposals (before decoding); without
    ``border`` the three border tests (``edge``, ``edge_local``, ``edge_fine``) are left out (for a
    :func:`stark` region they always are); without
    ``sure`` a region the verifier is sure of (the profile's ``sure_learned``) gets nothing for it."""
    if not features:
        return False
    strict = not candidate
    border = border and not stark(features, profile)
    edges = (features["edge"], features["edge_local"], features["edge_fine"]) if border else (np.inf,) * 3
    clear = strict and distinct(features, profile)
    trusted = sure and strict and features.get("learned", 0.0) > profile.sure_learned
    min_z = profile.sure_z_share * profile.min_z if trusted else profile.min_z
    min_pred_iou = min(profile.min_pred_iou, profile.distinct_min_pred_iou) if clear else profile.min_pred_iou
    min_stability = min(profile.min_stability, profile.distinct_min_stability) if clear else profile.min_stability
    return bool(
        features["area"] >= profile.min_area_fraction
        and features["fg_fraction"] <= profile.max_area_fraction
        and features["contrast"] >= (profile.min_contrast if strict else CANDIDATE_MIN_CONTRAST)
        and features["z"] >= (min_z if strict else 0.0)
        and edges[0] >= (profile.min_edge if strict else CANDIDATE_MIN_EDGE)
        and edges[1] >= (profile.min_edge_local if strict else CANDIDATE_MIN_EDGE)
        and edges[2] >= (profile.min_edge_fine if strict else 0.0)
        and features["thickness"] >= (profile.min_thickness if strict else 0.0)
        and (not strict or clear or features["thickness"] >= profile.elongated_thickness or trusted)
        and features["solidity"] >= (profile.min_solidity if strict else 0.0)
        and features["fg_share"] >= MIN_FOREGROUND_SHARE
        and features["edge_share"] <= MAX_EDGE_SHARE
        and features["background_ring"] <= MAX_BACKGROUND_RING
        and features["span"] < 1.0
        and (not strict or features["span"] <= profile.max_span)
        and features["sides"] <= 2
        and pred_iou >= min_pred_iou
        and stability >= min_stability
        and (not strict or features.get("learned", 1.0) >= profile.min_learned)
    )


def structure_score(features: dict[str, float]) -> float:
    """One number to rank regions: contrast times the root of edge strength, discounted for poor shape."""
    return float(features["contrast"] * np.sqrt(max(features["edge"], 0.0)) * min(1.0, features["solidity"] / 0.8))
