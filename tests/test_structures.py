"""Automatic regions are structures: the structure filter, its per-modality profiles, and LiteMedSAM's
automatic mode on generated images of every kind (a seed the defaults were not tuned on) and on pydicom's
real CT.

The thresholds asserted here are below what was measured on this seed (in the comments), so a change
that makes the mode clearly worse fails; ``bench/quality.py`` reports the full figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from engine_fixtures import dice, litemedsam_segmenter, read_testdata

from samie_node.config import Settings, load_settings
from samie_node.engine.automatic import Region, profile_name, refined_mask, remeasured, select
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.sam import SamSegmenter
from samie_node.engine.structures import (
    distinct,
    image_maps,
    passes,
    stark,
    structure_features,
    structure_score,
    work_mask,
)
from samie_node.profiles import StructureProfile
from samie_node.testing.phantoms import benchmark_set, first_try_set, noise_only
from samie_node.testing.quality import (
    VISIBILITY_BANDS,
    lesion_contrasts,
    recall_by_visibility,
    score_image,
    score_set,
    summarise,
)
from samie_node.testing.synthetic import SyntheticImage, disc_on_speckle, speckle

#: pydicom's CT_small (128 x 128): columns and rows of its structures with sharp borders.
CT_SMALL_STRUCTURES = {
    "vertebral body": (44, 6, 78, 46),
    "spinal canal": (48, 42, 70, 62),
    "aorta": (84, 0, 112, 24),
    "vertebral arch": (30, 54, 86, 80),
}


@pytest.fixture(scope="module")
def lite() -> Iterator[SamSegmenter]:
    yield litemedsam_segmenter()


def test_a_disc_is_a_structure_and_the_background_is_not() -> None:
    """The filter itself, without a model: the true disc passes, its complement and a band along the
    image edge (a field of view) do not."""
    disc = disc_on_speckle(256, rng=np.random.default_rng(5), contrast=3.0)
    maps = image_maps(disc.image)
    profile = Settings().segmenter.profiles["US"]
    inside = structure_features(maps.to_work(disc.mask), maps)
    outside = structure_features(maps.to_work(~disc.mask), maps)
    band = np.zeros(disc.mask.shape, bool)
    band[:, :40] = True
    edge = structure_features(maps.to_work(band), maps)
    assert inside is not None and passes(inside, profile)
    assert inside["contrast"] > 2 * profile.min_contrast
    assert not passes(outside, profile)
    assert edge is not None and not passes(edge, profile)


def test_a_smooth_swell_has_no_step_border_and_a_disc_has_one() -> None:
    """``edge_fine``: a bright disc on a CT-like grey field with a blurred step border (the scanner's point
    spread), and a smooth swell of the same height (a Gaussian bump, as a swell of tissue or a smooth
    texture is). Both stand out from their ring; only the disc's border is a step, and with the CT
    profile's ``min_edge_fine`` the swell is dropped where the other thresholds alone would keep it."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    radius = np.hypot(yy - 120, xx - 136)
    noise = rng.normal(0, 6, (256, 256)).astype(np.float32)
    measured = {}
    for name, grey, mask in (
        ("step", cv2.GaussianBlur(100 + 20 * (radius <= 30) + noise, (0, 0), 1.0), radius <= 30),
        ("swell", 100 + 20 * np.exp(-((radius / 40) ** 2)) + noise, radius <= 33),
    ):
        maps = image_maps(np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
        features = structure_features(maps.to_work(mask), maps)
        assert features is not None
        measured[name] = features
    profile = Settings().segmenter.profiles["CT"]
    step, swell = measured["step"], measured["swell"]
    assert step["contrast"] > 2 * profile.min_contrast and swell["contrast"] > profile.min_contrast
    assert step["edge_fine"] > 4 * profile.min_edge_fine > 0
    assert swell["edge_fine"] < 0.7 * profile.min_edge_fine
    assert passes(step, profile)
    without = profile.model_copy(update={"min_edge_fine": 0.0, "min_edge_local": 0.9 * swell["edge_local"]})
    assert passes(swell, without)
    assert not passes(swell, without.model_copy(update={"min_edge_fine": profile.min_edge_fine}))


def test_a_stark_ct_lesion_needs_no_border_test_and_a_swell_still_does(lite: SamSegmenter) -> None:
    """CT's ``stark_contrast``: on a generated CT slice of tune seed 24 a hypodense lesion stands out from
    its ring far more than any swell of tissue (contrast about 7), but its coarse-scale border gradient is
    no more than the image's typical one (``edge`` about 0.96, CT asks 1.0). With the rule a kept region
    outlines it; without it, nothing is kept there. A made-up swell (contrast 4.7, ``z`` 8, the starkest
    region outside every lesion of the tune seeds) still needs the border tests."""
    profile = Settings().segmenter.profiles["CT"]
    assert profile.stark_contrast > 0
    phantom = [p for p in benchmark_set(24, 12, 2, 6) if p.kind == "ct_structure"][4]
    lesion = phantom.lesions[1]
    name, regions = lite.explain(phantom.image, "CT")
    assert name == "CT"

    def on_lesion(kept: list[Region]) -> list[Region]:
        return [r for r in kept if dice(r.refined if r.refined is not None else r.mask, lesion) >= 0.8]

    found = on_lesion([r for r in regions if r.kept])
    assert found and all(stark(r.features, profile) and r.features["edge"] < profile.min_edge for r in found)
    without = profile.model_copy(update={"stark_contrast": 0.0})
    assert not on_lesion(select(regions, without, Settings().segmenter.max_masks))

    swell = {**found[0].features, "contrast": 4.7, "z": 8.0, "edge": 1.37, "edge_local": 1.23, "edge_fine": 1.61}
    assert not stark(swell, profile) and not passes(swell, profile)
    assert passes(swell, profile, border=False)


def test_on_photographs_a_whole_lesion_replaces_its_patches_that_outscore_it() -> None:
    """``whole_share``: a pigmented lesion whose two darker patches passed the filter with a higher score
    than the whole lesion. The photograph profile keeps the whole lesion in their place; a profile without
    the rule (1.0) keeps the patches; so does the photograph profile when the whole scores under its share
    of the best patch, or when it also overlaps a kept region that is not inside it."""
    yy, xx = np.mgrid[0:200, 0:200]
    whole = np.hypot(yy - 100, xx - 100) <= 50
    patches = [np.hypot(yy - 127, xx - 85) <= 12, np.hypot(yy - 127, xx - 115) <= 12]
    # a region as large as the lesion, shifted: IoU 0.57 with it, neither inside the other, the patches not in it
    neighbour = np.hypot(yy - 78, xx - 100) <= 50
    passing = {
        "area": 0.05, "fg_fraction": 0.05, "fg_share": 1.0, "contrast": 5.0, "z": 20.0, "edge": 4.0,
        "edge_local": 3.0, "edge_fine": 5.0, "thickness": 0.9, "solidity": 0.95, "edge_share": 0.0,
        "background_ring": 0.0, "sides": 0.0, "span": 0.3,
    }  # fmt: skip
    photograph = Settings().segmenter.profiles["XC"]
    assert photograph.whole_share == 0.5

    def kept(whole_score: float, profile: StructureProfile, extra: list[np.ndarray] | None = None) -> list[str]:
        masks = {"whole": whole, "patch 1": patches[0], "patch 2": patches[1]}
        scores = {"whole": whole_score, "patch 1": 10.0, "patch 2": 9.0}
        for index, mask in enumerate(extra or []):
            masks[f"other {index}"], scores[f"other {index}"] = mask, 9.5
        regions = [Region(mask, 0.9, 0.9, dict(passing), scores[name]) for name, mask in masks.items()]
        names = {id(region): name for region, name in zip(regions, masks, strict=True)}
        chosen = select(regions, profile, 8)
        assert {names[id(r)] for r in regions if r.kept} == {names[id(r)] for r in chosen}
        return sorted(names[id(r)] for r in chosen)

    assert kept(6.0, photograph) == ["whole"]
    assert kept(6.0, photograph.model_copy(update={"whole_share": 1.0})) == ["patch 1", "patch 2"]
    assert kept(4.0, photograph) == ["patch 1", "patch 2"]  # under half of the best patch's score
    assert kept(6.0, photograph, [neighbour]) == ["other 0", "patch 1", "patch 2"]


def test_on_photographs_a_whole_lesion_measured_on_its_refined_border_replaces_its_patches() -> None:
    """LiteMedSAM's mask of a lesion with a soft border ran past it: measured as decoded, its border fails
    (``edge_local`` under the photograph profile's bar, every other test passed), and two patches inside it
    were kept. Measured again on its refined border it passes and replaces them, as its refined mask; it
    does not replace a kept region that covers much of it (another mask of the same lesion), a region that
    fails more than the border is not measured again, and without ``remeasure`` the patches stay."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    radius = np.hypot(yy - 128, xx - 128)
    mottled = cv2.GaussianBlur(rng.normal(0, 1, (256, 256)).astype(np.float32), (0, 0), 4)
    dark = cv2.GaussianBlur((radius <= 50).astype(np.float32), (0, 0), 6) * (1 + 0.5 * mottled / mottled.std())
    skin, pigment = np.array([205, 160, 140], np.float32), np.array([110, 70, 50], np.float32)
    image = skin * (1 - dark[..., None]) + pigment * dark[..., None] + rng.normal(0, 3, (256, 256, 1))
    maps = image_maps(np.clip(image, 0, 255).astype(np.uint8))
    photograph = Settings().segmenter.profiles["XC"]
    decoded = radius <= 66  # 16 px past the lesion's edge
    features = structure_features(work_mask(decoded), maps)
    assert features is not None
    assert features["edge_local"] < photograph.min_edge_local  # measured 1.24 against 1.6
    assert passes(features, photograph, border=False) and not passes(features, photograph)
    passing = {
        "area": 0.01, "fg_fraction": 0.01, "fg_share": 1.0, "contrast": 5.0, "z": 20.0, "edge": 4.0,
        "edge_local": 3.0, "edge_fine": 5.0, "thickness": 0.9, "solidity": 0.95, "edge_share": 0.0,
        "background_ring": 0.0, "sides": 0.0, "span": 0.2,
    }  # fmt: skip
    patches = [np.hypot(yy - 140, xx - 110) <= 10, np.hypot(yy - 115, xx - 145) <= 10]
    looked_at: list[Region] = []

    def remeasure(region: Region) -> Region | None:
        looked_at.append(region)
        return remeasured(region, maps)

    def choose(inside: list[np.ndarray], whole_features: dict[str, float], again: bool = True) -> list[Region]:
        looked_at.clear()
        whole = Region(decoded, 0.9, 0.9, dict(whole_features), structure_score(whole_features))
        regions = [whole] + [Region(m, 0.9, 0.9, dict(passing), 10.0 - i) for i, m in enumerate(inside)]
        return select(regions, photograph, 8, remeasure=remeasure if again else None)

    chosen = choose(patches, features)
    assert len(chosen) == 1 and looked_at and looked_at[0].kept  # the decoded whole is marked kept
    truth = radius <= 50
    assert dice(chosen[0].mask, truth) > 0.9 and chosen[0].refined is chosen[0].mask
    assert chosen[0].features["edge_local"] >= photograph.min_edge_local
    assert dice(decoded, truth) < dice(chosen[0].mask, truth)
    # without the second look the patches stay
    assert [r.score for r in choose(patches, features, again=False)] == [10.0, 9.0]
    # a kept mask covering most of the lesion is not a patch: it stays
    assert [r.score for r in choose([radius <= 45], features)] == [10.0]
    # a whole failing more than its border (contrast under the bar) is not measured again
    faint = {**features, "contrast": photograph.min_contrast - 0.5}
    assert [r.score for r in choose(patches, faint)] == [10.0, 9.0] and not looked_at


def test_a_lesion_s_visibility_is_the_filter_s_contrast_on_its_true_mask() -> None:
    """The bench's visibility measure: a plain disc measures as the filter measures it, a same-size
    "lesion" drawn on plain background is invisible, and each lesion is counted in its band, found or not."""
    disc = disc_on_speckle(256, rng=np.random.default_rng(5), contrast=3.0)
    maps = image_maps(disc.image)
    invisible = np.roll(disc.mask, (0, 128 if disc.mask[:, :128].any() else -128), axis=(0, 1))
    invisible &= ~disc.mask
    visible, faint = lesion_contrasts(disc.image, [disc.mask, invisible])
    expected = structure_features(maps.to_work(disc.mask), maps)
    assert expected is not None and visible == pytest.approx(expected["contrast"])
    assert visible >= VISIBILITY_BANDS[-1][0] and faint < VISIBILITY_BANDS[0][1]
    score = score_image("us_mass", [disc.mask], [disc.mask, invisible], disc.mask.shape)
    assert score.found_each == (True, False)
    measured = replace(score, visibility=(visible, faint))
    assert recall_by_visibility([measured]) == {"us_mass": [(0, 1), (0, 0), (1, 1)]}


def test_a_kept_mask_is_moved_onto_the_edge_of_its_structure() -> None:
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:256, :256]
    disc = np.hypot(rows - 120, cols - 136) <= 40
    grey = cv2.GaussianBlur(np.where(disc, 160.0, 100.0).astype(np.float32), (0, 0), 2.5)
    grey += rng.normal(0, 6, grey.shape).astype(np.float32)
    image = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    maps = image_maps(image)

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))  # 6 px too far out, and 6 px too far in
    for decoded in (cv2.dilate(disc.astype(np.uint8), kernel) > 0, cv2.erode(disc.astype(np.uint8), kernel) > 0):
        refined = refined_mask(decoded, maps)
        # measured: 0.861 -> 0.995 (out), 0.839 -> 0.974 (in)
        assert dice(refined, disc) >= 0.96 and dice(refined, disc) > dice(decoded, disc) + 0.1
    too_large = cv2.dilate(disc.astype(np.uint8), kernel) > 0
    halfway, tighter = refined_mask(too_large, maps, 0.5), refined_mask(too_large, maps, 0.7)
    assert not (tighter & ~halfway).any() and tighter.sum() < halfway.sum()  # nearer the inside: inside it
    assert dice(tighter, disc) >= 0.93
    flat = np.full((64, 64, 3), 90, np.uint8)
    square = np.zeros((64, 64), bool)
    square[20:40, 20:40] = True
    assert refined_mask(square, image_maps(flat)).sum() >= 0.5 * square.sum()  # no edge: no collapse


def test_the_kept_masks_get_their_profile_s_border_level(lite: SamSegmenter) -> None:
    """The node's automatic mode (segment) and the benchmarks' (explain) refine each kept mask at the
    profile's ``border_level``: ultrasound's tighter one, not halfway."""
    disc = disc_on_speckle(256, rng=np.random.default_rng(7), contrast=3.0)
    level = Settings().segmenter.profiles["US"].border_level
    assert level > 0.5
    profile, regions = lite.explain(disc.image, "US")
    kept = [r for r in regions if r.kept]
    assert profile == "US" and kept
    maps = image_maps(disc.image)
    masks = list(lite.segment([disc.image], modalities=["US"])[0].masks)
    assert len(masks) == len(kept)
    for region in kept:
        expected = refined_mask(region.mask, maps, level)
        assert region.refined is not None and np.array_equal(region.refined, expected)
        assert any(np.array_equal(mask, expected) for mask in masks)
        assert not np.array_equal(expected, refined_mask(region.mask, maps, 0.5))


def _ellipse_on_speckle(rng: np.random.Generator, semi_axes: tuple[float, float], level: float) -> SyntheticImage:
    """A 256 px ellipse (centred, long axis horizontal) with ``level`` times the speckle's echo."""
    rows, cols = np.mgrid[0:256, 0:256].astype(np.float32)
    mask = ((cols - 128) / semi_axes[0]) ** 2 + ((rows - 140) / semi_axes[1]) ** 2 <= 1.0
    echo = 0.5 * speckle((256, 256), rng)
    echo[mask] *= level
    grey = np.clip(np.rint(255 * np.log1p(4 * echo) / np.log1p(12)), 0, 255).astype(np.uint8)
    return SyntheticImage(np.repeat(grey[:, :, None], 3, axis=2), mask)


def test_a_layer_across_the_image_is_not_a_lesion_and_an_oval_mass_is(lite: SamSegmenter) -> None:
    """A dark region across nearly the whole width (as the subcutaneous fat layer of a breast scan, ending
    short of both sides) is a layer, not a lesion: ultrasound's ``max_span`` drops it, whatever its
    contrast. A 2.5 : 1 oval mass of the same darkness is kept."""
    profile = Settings().segmenter.profiles["US"]
    layer = _ellipse_on_speckle(np.random.default_rng(4), (118.0, 50.0), 0.3)  # 92 % of the width
    features = structure_features(layer.mask, image_maps(layer.image))
    assert features is not None and features["span"] > profile.max_span
    assert passes(features, profile.model_copy(update={"max_span": 1.0}))  # only the span drops it
    assert not passes(features, profile)
    kept = list(lite.segment([layer.image], modalities=["US"])[0].masks)
    assert all(dice(m, layer.mask) < 0.5 for m in kept)  # measured: kept at Dice 0.99 without the limit

    mass = _ellipse_on_speckle(np.random.default_rng(3), (50.0, 20.0), 0.3)
    masks = list(lite.segment([mass.image], modalities=["US"])[0].masks)
    assert masks and max(dice(m, mass.mask) for m in masks) >= 0.85


def test_a_distinct_elongated_mass_is_kept_and_an_elongated_region_that_is_not_distinct_is_not(
    lite: SamSegmenter,
) -> None:
    """A 3.2 : 1 dark ellipse measures a thickness under ultrasound's ``elongated_thickness``, as a tissue
    layer's piece does, but stands out more than such a piece (``distinct``: the profile's
    ``distinct_contrast`` and ``distinct_z``): kept. With less contrast or a smaller ``z`` it is not,
    unless it is rounder; and only a distinct region gets by on LiteMedSAM's lower scores."""
    profile = Settings().segmenter.profiles["US"]
    mass = _ellipse_on_speckle(np.random.default_rng(5), (56.0, 17.5), 0.3)
    features = structure_features(mass.mask, image_maps(mass.image))
    assert features is not None
    assert profile.min_thickness <= features["thickness"] < profile.elongated_thickness
    assert distinct(features, profile) and passes(features, profile)
    faint = {**features, "contrast": profile.distinct_contrast - 0.1}
    small = {**features, "z": profile.distinct_z - 0.1}
    assert not passes(faint, profile) and not passes(small, profile)
    assert passes(faint, profile.model_copy(update={"elongated_thickness": 0.0}))
    assert passes(small, profile.model_copy(update={"elongated_thickness": 0.0}))
    assert passes({**faint, "thickness": profile.elongated_thickness}, profile)

    low_scores = (profile.distinct_min_pred_iou, profile.distinct_min_stability)
    assert low_scores[0] < profile.min_pred_iou and low_scores[1] < profile.min_stability
    assert passes(features, profile, *low_scores)
    round_and_faint = {**faint, "thickness": 0.9}
    assert passes(round_and_faint, profile) and not passes(round_and_faint, profile, *low_scores)

    masks = list(lite.segment([mass.image], modalities=["US"])[0].masks)
    assert masks and max(dice(m, mass.mask) for m in masks) >= 0.85
    _, regions = lite.explain(mass.image, "US")
    found = [r for r in regions if r.kept and dice(r.mask, mass.mask) >= 0.85]
    assert found and all(r.features["thickness"] < profile.elongated_thickness for r in found)  # kept as elongated


def test_tissue_texture_on_an_mr_slice_is_dropped_and_the_abdominal_mr_keeps_its_organs(lite: SamSegmenter) -> None:
    """MR's ``min_edge_fine``: the head phantom's tissue texture has darker and brighter patches whose border
    is a smooth swell, not a step. On a lesion-free slice of seed 37 (one of the seeds the value was chosen
    on) LiteMedSAM decodes such a patch and the other MR thresholds keep it; with MR's ``min_edge_fine``
    nothing is kept. pydicom's abdominal MR (``examples_overlay``) keeps its five organs: the largest one's
    border measured 2.1, just above MR's 2.0 (2.5 would drop it)."""
    profile = Settings().segmenter.profiles["MR"]
    assert profile.min_edge_fine > 0
    slices = [p for p in benchmark_set(37, controls=0) if p.kind == "mr_structure"]
    lesion_free = slices[0]
    assert not lesion_free.lesions
    name, regions = lite.explain(lesion_free.image, "MR")
    assert name == "MR"
    assert not [r for r in regions if r.kept]
    without = profile.model_copy(update={"min_edge_fine": 0.0})
    texture = select(regions, without, Settings().segmenter.max_masks)
    assert texture, "without the border test the texture patch is kept"
    assert all(r.features["edge_fine"] < profile.min_edge_fine for r in texture)

    frame = prepare_dataset(read_testdata("examples_overlay.dcm"), max_pixels=10**8)[0]
    assert frame.modality == "MR"
    organs = lite.segment([frame.image], modalities=[frame.modality])[0]
    assert len(organs) == 5
    assert all(mask.mean() < 0.1 for mask in organs.masks)  # organs, not the body or the field of view


def test_the_first_try_set_is_seeded_and_varied() -> None:
    """bench/quality.py's first-try set: the same seed gives the same pixels; speckle alone first; one
    ellipse per other image, bright and dark, round and elongated, some against the image edge."""
    tries = first_try_set(5, count=24, negatives=3)
    again = first_try_set(5, count=24, negatives=3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(tries, again, strict=True))
    assert [len(t.lesions) for t in tries] == [0] * 3 + [1] * 21
    assert {t.image.shape[0] for t in tries} == {256, 400}
    with_lesion = [t for t in tries if t.lesions]
    assert {t.info["level"] > 1 for t in with_lesion} == {True, False}
    assert {t.info["stretch"] == 1.0 for t in with_lesion} == {True, False}
    assert any(t.info["edge"] for t in with_lesion)
    for item in with_lesion:
        mask = item.lesions[0]
        grey = item.image[:, :, 0].astype(float)
        darker = grey[mask].mean() < grey[~mask].mean()
        assert darker == (item.info["level"] < 1) and mask.sum() > 100


def test_the_modality_chooses_the_profile_and_the_image_decides_when_it_says_nothing() -> None:
    profiles = Settings().segmenter.profiles
    grey = np.full((64, 64, 3), 90, np.uint8)
    colour = grey.copy()
    colour[:, :, 0] = 200
    speckled = disc_on_speckle(128, rng=np.random.default_rng(1)).image
    assert profile_name(profiles, "US", grey) == "US"
    assert profile_name(profiles, "IVUS", grey) == "US"
    assert profile_name(profiles, "CT", grey) == "CT"
    assert profile_name(profiles, "PT", grey) == "default"
    assert profile_name(profiles, "ES", colour) == "XC"
    assert profile_name(profiles, "OT", colour) == "XC"
    assert profile_name(profiles, "", speckled) == "US"
    assert profile_name(profiles, "OT", grey) == "default"
    assert profile_name(profiles, "XC", grey) == "default"  # a grey "photograph": judged by content


def test_a_profile_in_the_file_changes_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[segmenter.profiles.CT]\nmin_contrast = 3.5\n\n[segmenter.profiles.PT]\nmin_z = 9.0\n")
    profiles = load_settings(path).segmenter.profiles
    defaults = Settings().segmenter.profiles
    assert profiles["CT"].min_contrast == 3.5
    assert profiles["CT"].min_stability == defaults["CT"].min_stability
    assert profiles["PT"].min_z == 9.0
    assert profiles["PT"].min_contrast == Settings().segmenter.profiles["default"].min_contrast
    assert set(defaults) <= set(profiles)


def test_every_kind_is_found_and_noise_keeps_no_region(lite: SamSegmenter) -> None:
    """Seed 21 (the defaults were tuned on seeds 1 to 5): three images per kind, one of them lesion-free, and
    noise-only controls. Measured on this seed: see the comments."""
    phantoms = benchmark_set(21, per_kind=3, negatives_per_kind=1, controls=0)
    phantoms += [noise_only(np.random.default_rng(100 + k)) for k in range(4)]
    summaries = {s.kind: s for s in summarise(score_set(lite, phantoms))}
    assert set(summaries) == {"us_mass", "skin_lesion", "fundus", "ct_structure", "mr_structure", "noise"}
    found = sum(s.recall * s.lesions for s in summaries.values())
    lesions = sum(s.lesions for s in summaries.values())
    assert found / lesions >= 0.6, summaries
    for kind in ("fundus", "mr_structure", "skin_lesion"):
        assert summaries[kind].mean_dice >= 0.6, summaries[kind]
    assert summaries["noise"].negatives_with_region == 0, summaries["noise"]
    assert sum(s.negatives_with_region for s in summaries.values()) <= 1, summaries


def test_real_ct_regions_lie_on_its_anatomy(lite: SamSegmenter) -> None:
    """pydicom's CT_small: a thoracic vertebra with its canal and the aorta; before the structure filter
    the automatic mode kept nothing here."""
    frame = prepare_dataset(read_testdata("CT_small.dcm"), max_pixels=10**8)[0]
    result = lite.segment([frame.image], modalities=[frame.modality])[0]
    assert len(result) >= 1
    on_anatomy = []
    for mask in result.masks:
        rows, cols = np.nonzero(mask)
        centre = (float(cols.mean()), float(rows.mean()))
        names = [
            n for n, (c0, r0, c1, r1) in CT_SMALL_STRUCTURES.items() if c0 <= centre[0] <= c1 and r0 <= centre[1] <= r1
        ]
        on_anatomy.append(names)
        assert mask.mean() < 0.2  # no body outline, no field of view
    assert all(on_anatomy), on_anatomy
