"""SAM-IE and SAMAug enhancement on small hand-made masks, checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from engine_fixtures import dice, pydicom_file
from typer.testing import CliRunner

from samie_node.cli import app
from samie_node.engine.enhance import contour_map, enhancement_method, label_picture, overlay, sam_ie, samaug
from samie_node.engine.masks import MaskSet
from samie_node.testing.synthetic import disc_on_speckle


def _grey_image(size: int = 8) -> np.ndarray:
    grey = (np.arange(size * size, dtype=np.uint8).reshape(size, size) * 3 + 10).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _mask_set(*masks: np.ndarray, stability: tuple[float, ...] | None = None) -> MaskSet:
    count = len(masks)
    return MaskSet(
        masks=np.stack(masks).astype(bool),
        predicted_iou=np.full(count, 0.9, np.float32),
        stability_score=np.asarray(stability or (0.9,) * count, np.float32),
    )


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


SQUARE_BORDER = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)


def test_sam_ie_channels_for_one_square() -> None:
    image = _grey_image()
    mask = _square(8, 2, 2, 4)
    result = sam_ie(image, _mask_set(mask))

    grey = image[:, :, 0]
    np.testing.assert_array_equal(result.binary_mask, mask)
    assert result.binary_mask.dtype == np.bool_
    np.testing.assert_array_equal(result.contour_map, SQUARE_BORDER * 255)
    assert result.contour_map.dtype == np.uint8
    assert result.image.dtype == np.uint8 and result.image.shape == (8, 8, 3)
    np.testing.assert_array_equal(result.image[:, :, 0], np.where(mask, grey, 0))
    np.testing.assert_array_equal(result.image[:, :, 1], SQUARE_BORDER * 255)
    np.testing.assert_array_equal(result.image[:, :, 2], grey)


def test_binary_mask_is_a_union_not_a_sum() -> None:
    """Overlapping masks: the seed's sum would give 2 (and overflow); the union stays boolean."""
    image = _grey_image()
    first, second = _square(8, 1, 1, 4), _square(8, 3, 3, 4)
    result = sam_ie(image, _mask_set(first, second))
    np.testing.assert_array_equal(result.binary_mask, first | second)
    np.testing.assert_array_equal(result.image[:, :, 0], np.where(first | second, image[:, :, 0], 0))
    # both borders are drawn, including the part of each border that lies inside the other mask
    expected = np.zeros((8, 8), np.uint8)
    for top in (1, 3):
        expected[top, top : top + 4] = expected[top + 3, top : top + 4] = 255
        expected[top : top + 4, top] = expected[top : top + 4, top + 3] = 255
    np.testing.assert_array_equal(result.contour_map, expected)


def test_contours_of_a_ring_include_the_hole() -> None:
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 1, 0],
            [0, 1, 0, 1, 1, 1, 0, 1, 0],
            [0, 1, 1, 0, 0, 0, 1, 1, 0],
            [0, 1, 1, 0, 0, 0, 1, 1, 0],
            [0, 1, 1, 0, 0, 0, 1, 1, 0],
            [0, 1, 0, 1, 1, 1, 0, 1, 0],
            [0, 1, 1, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(contour_map(_mask_set(ring)), expected * 255)


def test_mask_at_the_image_edge_gets_a_border_along_the_edge() -> None:
    mask = np.zeros((6, 6), bool)
    mask[:3, :3] = True
    drawn = contour_map(_mask_set(mask))
    np.testing.assert_array_equal(drawn[0, :3], [255, 255, 255])
    np.testing.assert_array_equal(drawn[:3, 0], [255, 255, 255])
    assert drawn[1, 1] == 0


def test_no_masks_gives_empty_mask_channels() -> None:
    image = _grey_image()
    result = sam_ie(image, MaskSet.empty(8, 8))
    assert not result.binary_mask.any()
    assert not result.contour_map.any()
    np.testing.assert_array_equal(result.image[:, :, :2], 0)
    np.testing.assert_array_equal(result.image[:, :, 2], image[:, :, 0])


def test_colour_image_uses_luma() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 200  # pure red: BT.601 luma 0.299 * 200 = 59.8
    result = sam_ie(image, _mask_set(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(result.image[:, :, 2], 60)
    np.testing.assert_array_equal(result.image[:, :, 0], 60)


def test_samaug_adds_stability_prior_and_boundaries() -> None:
    image = _grey_image()
    first, second = _square(8, 1, 1, 4), _square(8, 3, 3, 4)
    masks = _mask_set(first, second, stability=(0.5, 0.8))
    result = samaug(image, masks)

    weights = masks.stability_score.astype(np.float64)  # the float32 scores, exactly
    prior = np.clip(weights[0] * first + weights[1] * second, 0.0, 1.0)
    boundary = contour_map(masks) / 255.0
    scaled = image / 255.0
    np.testing.assert_array_equal(result.image[:, :, 0], image[:, :, 0])
    np.testing.assert_array_equal(result.image[:, :, 1], np.rint((scaled[:, :, 1] + prior) / 2 * 255))
    np.testing.assert_array_equal(result.image[:, :, 2], np.rint((scaled[:, :, 2] + boundary) / 2 * 255))
    np.testing.assert_array_equal(result.binary_mask, first | second)
    assert result.image.dtype == np.uint8


def test_enhancement_is_deterministic_and_named() -> None:
    image = _grey_image()
    masks = _mask_set(_square(8, 2, 2, 4))
    assert sam_ie(image, masks).image.tobytes() == sam_ie(image.copy(), masks).image.tobytes()
    assert enhancement_method("sam_ie") is sam_ie and enhancement_method("samaug") is samaug
    with pytest.raises(ValueError):
        enhancement_method("sharpen")


def test_overlay_and_label_picture() -> None:
    image = _grey_image()
    mask = _square(8, 2, 2, 4)
    result = sam_ie(image, _mask_set(mask))
    picture = overlay(image, result)
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
    assert tuple(picture[2, 2]) == (255, 230, 0)  # contour colour
    np.testing.assert_array_equal(picture[0, 0], image[0, 0])  # untouched outside
    labels = label_picture(_mask_set(mask))
    assert labels[3, 3].any() and not labels[0, 0].any()


def test_mismatched_sizes_and_bad_masks_are_refused() -> None:
    with pytest.raises(ValueError):
        sam_ie(_grey_image(8), _mask_set(_square(6, 1, 1, 2)))
    with pytest.raises(ValueError):
        sam_ie(_grey_image(8)[:, :, 0], _mask_set(_square(8, 1, 1, 2)))
    with pytest.raises(ValueError):
        MaskSet(
            masks=np.zeros((1, 4, 4), np.uint8),
            predicted_iou=np.zeros(1, np.float32),
            stability_score=np.zeros(1, np.float32),
        )
    with pytest.raises(ValueError):
        MaskSet(
            masks=np.zeros((2, 4, 4), bool),
            predicted_iou=np.zeros(1, np.float32),
            stability_score=np.zeros(2, np.float32),
        )


def test_cli_enhance_writes_the_pngs(tmp_path: Path) -> None:
    """``samie-node enhance`` with the embedded LiteMedSAM: PNG and multi-frame DICOM in, five PNGs per frame."""
    disc = disc_on_speckle(256, rng=np.random.default_rng(11), center=(120.0, 140.0), radius=30.0)
    picture = tmp_path / "disc.png"
    cv2.imwrite(str(picture), disc.image[:, :, 0])
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        app, ["enhance", str(picture), str(pydicom_file("SC_rgb_rle_2frame.dcm")), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    stems = ["disc", "SC_rgb_rle_2frame_f1", "SC_rgb_rle_2frame_f2"]
    kinds = ["mask", "masks", "contours", "enhanced", "overlay"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{k}.png" for s in stems for k in kinds)
    mask = cv2.imread(str(out / "disc_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert dice(mask, disc.mask) >= 0.9  # automatic mode found the disc
    enhanced = cv2.cvtColor(cv2.imread(str(out / "disc_enhanced.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(enhanced[:, :, 2], disc.image[:, :, 0])

    boxed = tmp_path / "boxed"
    result = runner.invoke(
        app,
        ["enhance", str(picture), str(pydicom_file("JPEG-lossy.dcm")), "--out", str(boxed), "--box", "108,88,172,152"],
    )
    assert result.exit_code == 1  # one file could not be decoded; the other was still written
    assert "JPEG-lossy.dcm" in result.output
    assert dice(cv2.imread(str(boxed / "disc_mask.png"), cv2.IMREAD_GRAYSCALE) > 0, disc.mask) >= 0.9
    assert runner.invoke(app, ["enhance", str(picture), "--out", str(boxed), "--box", "1,2,3"]).exit_code != 0
