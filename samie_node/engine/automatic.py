"""LiteMedSAM's automatic mode: propose boxes, decode them, re-prompt tight, keep only structures.

1. :func:`samie_node.engine.proposals.propose` gives up to seven boxes around regions of the image.
2. Each box, grown by 8 %, is decoded; LiteMedSAM segments much better from a box that is tight around
   an object, so each mask's own bounding box is decoded again, and both masks stay candidates.
3. Every candidate mask (largest piece, holes filled) is measured against its surroundings and its
   border (:mod:`samie_node.engine.structures`), and, when the segmenter has a verifier for its weights,
   scored on LiteMedSAM's own embedding (:mod:`samie_node.engine.verifier`: ``learned``); it is kept only
   when it passes the modality's :class:`samie_node.profiles.StructureProfile` (with the learned score:
   its ``with_verifier`` thresholds, or its hand ones for a *distinct* region; :func:`keeps`).
4. Of masks that overlap (IoU above 0.5, or one 80 % inside another), the better structure stays (a
   mask kept only because the verifier is sure of it, the profile's ``sure_learned``, comes after every
   other: it fills a place, it takes none); with the profile's ``whole_share`` (photographs) a larger
   passing mask replaces the kept ones inside it. A mask that fails only the border tests (LiteMedSAM's
   mask ran past a soft edge) is measured again on its refined border (:func:`remeasured`); passing there,
   it may replace kept patches that cover less than ``PATCHES`` of it, and nothing else.
5. Each kept mask's border is moved onto the image's edge, at the profile's ``border_level`` between its
   ring and its inside (halfway, or nearer the inside for ultrasound;
   :func:`samie_node.engine.structures.refine_border`): LiteMedSAM's masks run over soft edges.

The profile is chosen by the DICOM Modality; for a modality that says nothing about the picture (OT, or
none) the image decides: colour -> the photograph profile, speckle -> ultrasound, else the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from samie_node.engine.masks import MaskSet
from samie_node.engine.proposals import box_iou, fill_holes, grow, largest_component, propose, tight_box
from samie_node.engine.structures import (
    SPECKLE_INDEX,
    Maps,
    distinct,
    image_maps,
    is_grey,
    noise_index,
    passes,
    refine_border,
    structure_features,
    structure_score,
)
from samie_node.engine.verifier import Verifier
from samie_node.profiles import StructureProfile

#: Decodes (K, 4) boxes in image pixels to (masks (K, H, W) bool, predicted IoU (K,), stability (K,)).
Decoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Embedded:
    """What the image's embedding says about a mask: ``describe`` pools it over an image-size bool mask
    (:func:`samie_node.engine.verifier.pooled`, None when it cannot), and ``verifier``, when there is one
    for these weights, turns that into the ``learned`` feature."""

    describe: Callable[[np.ndarray], np.ndarray | None]
    verifier: Verifier | None = None


#: Box margins (fraction of the box size) of the first and the tight decode.
PAD = 0.08
TIGHT_PAD = 0.08
#: A tight box this close to its first box would give the same mask again: not decoded.
REPROMPT_SKIP_IOU = 0.9
#: Overlap resolution between kept masks.
MASK_NMS = 0.5
CONTAINED = 0.8
#: A mask kept only after its border was refined (step 4) replaces kept masks that cover less than this
#: share of it together: patches of a lesion, not another mask of the whole lesion.
PATCHES = 0.3

#: DICOM Modality -> profile name, for modalities whose profile is not named after themselves.
MODALITY_PROFILES = {"IVUS": "US", "ES": "XC", "SM": "XC", "GM": "XC"}


def profile_name(profiles: Mapping[str, StructureProfile], modality: str, image: np.ndarray) -> str:
    """The profile for ``modality`` (see the module notes); ``"default"`` when nothing more fits."""
    name = (modality or "").upper()
    name = MODALITY_PROFILES.get(name, name)
    colour = not is_grey(image)
    if name in profiles and not (name == "XC" and not colour):
        return name
    if name and name not in ("OT", "XC", "SC"):
        return "default"
    if colour:
        return "XC" if "XC" in profiles else "default"
    if noise_index(image) >= SPECKLE_INDEX and "US" in profiles:
        return "US"
    return "default"


@dataclass
class Region:
    """One decoded candidate mask with its measurements."""

    mask: np.ndarray
    pred_iou: float
    stability: float
    features: dict[str, float]
    score: float
    kept: bool = False
    #: The mask with its border refined (:func:`refined_mask`), filled in by :func:`explain_regions`.
    refined: np.ndarray | None = None
    #: The mask's description on the image embedding (:attr:`Embedded.describe`), when one was given.
    described: np.ndarray | None = None
    #: The same candidate measured on its refined border (:func:`remeasured`), filled in by
    #: :func:`explain_regions`.
    remeasured: Region | None = None


def _decoded_regions(
    image_size: tuple[int, int],
    maps: Maps,
    boxes: np.ndarray,
    decode: Decoder,
    profile: StructureProfile,
    embedded: Embedded | None = None,
) -> list[Region]:
    height, width = image_size
    boxes = grow(boxes, PAD, height, width)
    masks, ious, stabilities = decode(boxes)
    entries = list(zip(masks, ious, stabilities, strict=True))
    mains = [largest_component(mask) for mask in masks]
    tight: list[np.ndarray] = []
    for index, main in enumerate(mains):
        box = tight_box(main)
        if box is None or main.sum() > profile.max_area_fraction * height * width:
            continue
        box = grow(box, TIGHT_PAD, height, width, minimum=1.0)[0]
        if box_iou(box, boxes[index]) < REPROMPT_SKIP_IOU:
            tight.append(box)
    if tight:
        entries += list(zip(*decode(np.stack(tight)), strict=True))
    regions = []
    for index, (mask, iou, stability) in enumerate(entries):
        cleaned = fill_holes(mains[index] if index < len(mains) else largest_component(mask))
        features = structure_features(maps.to_work(cleaned), maps) or {}
        score = structure_score(features) if features else 0.0
        described = embedded.describe(cleaned) if embedded is not None and features else None
        if embedded is not None and embedded.verifier is not None and features:
            features["learned"] = embedded.verifier.score(described)
        regions.append(Region(cleaned, float(iou), float(stability), features, score, described=described))
    return regions


class _Shares(NamedTuple):
    """How two masks overlap: their IoU, the share of the first inside the second and of the second inside
    the first."""

    iou: float
    first_inside: float
    second_inside: float

    @property
    def overlapping(self) -> bool:
        return self.iou > MASK_NMS or self.first_inside > CONTAINED or self.second_inside > CONTAINED


def _shares(first: Region, second: Region) -> _Shares:
    first_area, second_area = int(first.mask.sum()), int(second.mask.sum())
    inter = int(np.logical_and(first.mask, second.mask).sum())
    union = first_area + second_area - inter
    return _Shares(inter / max(1, union), inter / max(1, first_area), inter / max(1, second_area))


def keeps(
    region: Region,
    profile: StructureProfile,
    verified: StructureProfile | None = None,
    border: bool = True,
    sure: bool = True,
) -> bool:
    """The structure filter for one decoded mask. With a verifier (``verified``: the profile's
    ``with_verifier`` thresholds, :meth:`~samie_node.profiles.StructureProfile.verified`) a mask stays when
    it passes those, the learned score included, or when it is *distinct* and passes the hand thresholds:
    the verifier, trained on generated images, judges the regions the hand measurements cannot, and does
    not overrule a region that stands out clearly. Without ``border`` the border tests are left out; without
    ``sure`` the ``sure_learned`` rule is."""
    features = region.features
    by_hand = passes(features, profile, region.pred_iou, region.stability, border=border, sure=sure)
    if verified is None:
        return by_hand
    return passes(features, verified, region.pred_iou, region.stability, border=border, sure=sure) or (
        by_hand and distinct(features, profile)
    )


def select(
    regions: list[Region],
    profile: StructureProfile,
    max_regions: int,
    with_verifier: bool = False,
    remeasure: Callable[[Region], Region | None] | None = None,
) -> list[Region]:
    """The structure filter (:func:`keeps`; ``with_verifier`` when the regions carry the learned score),
    then overlap resolution (the better structure stays; a region kept only because the verifier is sure of
    it, the profile's ``sure_learned``, comes after every other one: it fills a place, it takes none; with
    the profile's ``whole_share`` a larger passing region may replace the kept ones inside it:
    :func:`_wholes`; so may a region that failed only the border tests and passes measured on its refined
    border, ``remeasure``, when those it replaces are patches of it); marks ``kept`` and returns the kept,
    best first. A region kept measured again is returned as that version (its ``refined`` mask), and its
    decoded one is marked ``kept``."""
    verified = profile.verified() if with_verifier and profile.with_verifier else None
    for region in regions:
        region.kept = keeps(region, profile, verified)
    unsure = {id(r) for r in regions if r.kept and not keeps(r, profile, verified, sure=False)}
    passing = sorted((r for r in regions if r.kept), key=lambda r: (id(r) in unsure, -r.score))
    kept: list[Region] = []
    for region in passing:
        if any(_shares(region, other).overlapping for other in kept) or len(kept) == max_regions:
            region.kept = False
            continue
        kept.append(region)
    kept.sort(key=lambda r: -r.score)
    if profile.whole_share < 1.0:
        passed = {id(r) for r in passing}
        border_only = [r for r in regions if id(r) not in passed and keeps(r, profile, verified, border=False)]
        second = _second_looks(border_only, remeasure, profile, verified) if remeasure is not None else []
        wholes = sorted(passing + [again for again, _ in second], key=lambda r: -r.score)
        kept = _wholes(wholes, kept, profile.whole_share, {id(again) for again, _ in second})
        for again, region in second:
            region.kept = again.kept
    return kept


def _second_looks(
    regions: list[Region],
    remeasure: Callable[[Region], Region | None],
    profile: StructureProfile,
    verified: StructureProfile | None,
) -> list[tuple[Region, Region]]:
    """Each of ``regions`` (they failed only the border tests) that passes measured on its refined border:
    (that version, the decoded region)."""
    looks = [(remeasure(region), region) for region in regions]
    return [(again, region) for again, region in looks if again is not None and keeps(again, profile, verified)]


def _wholes(passing: list[Region], kept: list[Region], share: float, patched: Set[int] = frozenset()) -> list[Region]:
    """``kept`` with each passing region that was dropped for overlapping only kept regions that lie inside
    it, and that scores at least ``share`` of the best of them, in their place (best first). A region whose
    id is in ``patched`` replaces them only when they cover less than ``PATCHES`` of it together."""
    for region in passing:
        if region.kept:
            continue
        shares = {id(other): _shares(region, other) for other in kept}
        parts = [other for other in kept if shares[id(other)].overlapping]
        if not parts or any(shares[id(part)].second_inside <= CONTAINED for part in parts):
            continue
        if id(region) in patched and sum(shares[id(part)].first_inside for part in parts) >= PATCHES:
            continue
        if region.score >= share * max(part.score for part in parts):
            for part in parts:
                part.kept = False
            region.kept = True
            kept = [other for other in kept if other.kept] + [region]
    return sorted(kept, key=lambda r: -r.score)


def _verifying(embedded: Embedded | None) -> bool:
    return embedded is not None and embedded.verifier is not None


def refined_mask(mask: np.ndarray, maps: Maps, level: float = 0.5) -> np.ndarray:
    """A kept mask with its border refined at ``level`` (step 5): the largest piece, holes filled, or the
    decoded mask when the refined one would have lost half of its area."""
    refined = fill_holes(largest_component(refine_border(mask, maps, level)))
    return refined if refined.sum() >= 0.5 * mask.sum() else mask


def candidate_regions(
    image: np.ndarray,
    decode: Decoder,
    profile: StructureProfile,
    maps: Maps | None = None,
    embedded: Embedded | None = None,
) -> list[Region]:
    """Every decoded candidate of ``image`` with its features, nothing dropped yet (for benchmarks)."""
    maps = maps if maps is not None else image_maps(image)
    candidates = propose(maps, profile)
    if not candidates:
        return []
    height, width = image.shape[:2]
    boxes = np.stack([c.box for c in candidates])
    return _decoded_regions((height, width), maps, boxes, decode, profile, embedded)


def remeasured(region: Region, maps: Maps, level: float = 0.5) -> Region | None:
    """``region`` measured again on its refined border (:func:`refined_mask`), for a mask that ran past a
    soft edge (step 4); its ``learned`` score is the decoded mask's. None when it measures nothing."""
    refined = region.refined if region.refined is not None else refined_mask(region.mask, maps, level)
    features = structure_features(maps.to_work(refined), maps)
    if not features:
        return None
    if "learned" in region.features:
        features["learned"] = region.features["learned"]
    return Region(refined, region.pred_iou, region.stability, features, structure_score(features), refined=refined)


def explain_regions(
    image: np.ndarray, decode: Decoder, profile: StructureProfile, max_regions: int, embedded: Embedded | None = None
) -> list[Region]:
    """Every decoded candidate of ``image`` with its measurements, marked ``kept`` or not, and each one's
    refined mask and its measurements there (``remeasured``), so a replay with other thresholds has them
    (for benchmarks)."""
    maps = image_maps(image)
    regions = candidate_regions(image, decode, profile, maps, embedded)
    for region in regions:
        region.refined = refined_mask(region.mask, maps, profile.border_level)
        region.remeasured = remeasured(region, maps) if region.features else None
    select(regions, profile, max_regions, _verifying(embedded), lambda region: region.remeasured)
    return regions


def proposal_boxes(image: np.ndarray, profile: StructureProfile) -> np.ndarray:
    """The (K, 4) boxes the automatic mode would decode first for ``image`` (for tests and benchmarks)."""
    return np.asarray([c.box for c in propose(image_maps(image), profile)], np.float32).reshape(-1, 4)


def find_structures(
    image: np.ndarray, decode: Decoder, profile: StructureProfile, max_regions: int, embedded: Embedded | None = None
) -> MaskSet:
    """The structures in ``image``: decoded masks that pass the structure filter, best first, their borders
    refined."""
    maps = image_maps(image)
    regions = candidate_regions(image, decode, profile, maps, embedded)

    def remeasure(region: Region) -> Region | None:
        return remeasured(region, maps, profile.border_level)

    kept = select(regions, profile, max_regions, _verifying(embedded), remeasure)
    if not kept:
        return MaskSet.empty(*image.shape[:2])
    level = profile.border_level
    return MaskSet(
        masks=np.stack([r.refined if r.refined is not None else refined_mask(r.mask, maps, level) for r in kept]),
        predicted_iou=np.asarray([r.pred_iou for r in kept], np.float32),
        stability_score=np.asarray([r.stability for r in kept], np.float32),
    )
