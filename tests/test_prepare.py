"""From DICOM (and PNG/JPEG) to 8-bit RGB frames: LUTs, windows, colour models, frames, codecs, limits."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from engine_fixtures import pydicom_file, read_testdata
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.sequence import Sequence as DicomSequence

from samie_node.engine.prepare import (
    check_pixel_budget,
    frames_from_file,
    image_from_file,
    prepare_dataset,
)
from samie_node.errors import UnsupportedImageError

LIMIT = 100_000_000


def _only(dataset: Dataset) -> np.ndarray:
    frames = prepare_dataset(dataset, max_pixels=LIMIT)
    assert len(frames) == 1
    image = frames[0].image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the code under test."""
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(values <= low, 0, np.where(values > high, 255, out))
    return np.rint(out).astype(np.uint8)


def test_window_from_the_file_is_applied() -> None:
    ds = read_testdata("MR_small.dcm")
    image = _only(ds)
    expected = _linear_window(ds.pixel_array.astype(np.float64), 600.0, 1600.0)
    np.testing.assert_array_equal(image[:, :, 0], expected)
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])


def test_rescale_is_applied_before_the_window() -> None:
    ds = read_testdata("CT_small.dcm")  # RescaleIntercept -1024: stored 1064 is 40 HU
    ds.WindowCenter, ds.WindowWidth = 40, 400
    image = _only(ds)
    hounsfield = ds.pixel_array.astype(np.float64) * 1.0 - 1024.0
    np.testing.assert_array_equal(image[:, :, 0], _linear_window(hounsfield, 40.0, 400.0))


def test_modality_lut_sequence_is_applied() -> None:
    ds = read_testdata("MR_small.dcm")
    stored = ds.pixel_array
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "US"
    lut.LUTData = [min(4095, 2 * v) for v in range(4096)]  # doubles every stored value
    ds.ModalityLUTSequence = DicomSequence([lut])
    ds.WindowCenter, ds.WindowWidth = 1200, 3200
    image = _only(ds)
    np.testing.assert_array_equal(image[:, :, 0], _linear_window(2.0 * stored, 1200.0, 3200.0))


def test_voi_lut_sequence_is_applied_and_scaled_to_its_range() -> None:
    ds = read_testdata("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = [4095 - v for v in range(4096)]  # an inverting LUT
    ds.VOILUTSequence = DicomSequence([lut])
    image = _only(ds)
    expected = np.rint((4095 - ds.pixel_array.astype(np.float64)) / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image[:, :, 0], expected)


def test_percentile_window_when_the_file_gives_none() -> None:
    ds = read_testdata("CT_small.dcm")
    assert "WindowCenter" not in ds
    image = _only(ds)
    hounsfield = ds.pixel_array.astype(np.float64) - 1024.0
    low, high = np.percentile(hounsfield, (0.5, 99.5))
    expected = np.rint(np.clip((hounsfield - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image[:, :, 0], expected)
    # the extremes are saturated, the bulk of the histogram is spread over the 8 bits
    assert (image[:, :, 0] == 0).mean() <= 0.01 and image[:, :, 0].std() > 40


def test_monochrome1_is_inverted() -> None:
    normal = _only(read_testdata("MR_small.dcm"))
    ds = read_testdata("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _only(ds)
    np.testing.assert_array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_rgb_passes_through() -> None:
    ds = read_testdata("SC_rgb_rle.dcm")
    np.testing.assert_array_equal(_only(ds), ds.pixel_array)


def test_rgb_16_bit_is_scaled_to_8_bit() -> None:
    eight = _only(read_testdata("SC_rgb_rle.dcm"))
    sixteen = _only(read_testdata("SC_rgb_rle_16bit.dcm"))
    assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1


def test_ybr_is_converted_to_rgb() -> None:
    rgb = _only(read_testdata("SC_rgb_rle.dcm")).astype(int)
    ybr = _only(read_testdata("SC_ybr_full_422_uncompressed.dcm")).astype(int)
    assert np.abs(rgb - ybr).mean() < 3
    jpeg_ybr = _only(read_testdata("SC_rgb_dcmtk_+eb+cy+np.dcm")).astype(int)  # JPEG baseline, YBR_FULL_422
    assert np.abs(rgb - jpeg_ybr).mean() < 6


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    ds = read_testdata("examples_palette.dcm")
    image = _only(ds)
    expected = apply_color_lut(ds.pixel_array, ds)
    if expected.dtype != np.uint8:
        expected = np.rint(expected / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert not np.array_equal(image[:, :, 0], image[:, :, 2])  # really colour


def test_multi_frame_is_split_with_one_based_frame_numbers() -> None:
    ds = read_testdata("SC_rgb_rle_2frame.dcm")
    frames = prepare_dataset(ds, max_pixels=LIMIT)
    assert [f.frame_number for f in frames] == [1, 2]
    assert {f.sop_instance_uid for f in frames} == {ds.SOPInstanceUID}
    np.testing.assert_array_equal(frames[0].image, ds.pixel_array[0])
    np.testing.assert_array_equal(frames[1].image, ds.pixel_array[1])

    video = prepare_dataset(read_testdata("examples_ybr_color.dcm"), max_pixels=LIMIT)  # JPEG, YBR, 30 frames
    assert [f.frame_number for f in video] == list(range(1, 31))
    assert all(f.image.shape == (240, 320, 3) for f in video)


def test_per_frame_functional_groups_set_window_and_spacing() -> None:
    ds = read_testdata("rtdose.dcm")  # 15 frames of 32-bit dose
    stored = ds.pixel_array.astype(np.float64)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.25]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for index in range(15):
        item = Dataset()
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 2, -10
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 1_000_000 + 10_000 * index, 400_000
        item.PixelValueTransformationSequence = DicomSequence([transform])
        item.FrameVOILUTSequence = DicomSequence([voi])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    frames = prepare_dataset(ds, max_pixels=LIMIT)
    assert len(frames) == 15
    for index in (0, 7, 14):
        expected = _linear_window(stored[index] * 2 - 10, 1_000_000 + 10_000 * index, 400_000)
        np.testing.assert_array_equal(frames[index].image[:, :, 0], expected)
        assert frames[index].pixel_spacing == (0.5, 0.25)


def test_pixel_spacing_is_reported() -> None:
    assert prepare_dataset(read_testdata("CT_small.dcm"), max_pixels=LIMIT)[0].pixel_spacing == pytest.approx(
        (0.661468, 0.661468)
    )
    assert prepare_dataset(read_testdata("examples_rgb_color.dcm"), max_pixels=LIMIT)[0].pixel_spacing is None


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm"),  # JPEG 2000, RGB
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),  # JPEG lossless
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ],
)
def test_lossless_syntaxes_decode_to_the_same_pixels(compressed: str, reference: str) -> None:
    np.testing.assert_array_equal(_only(read_testdata(compressed)), _only(read_testdata(reference)))


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPGExtended.dcm",
        "JPEGLSNearLossless_16.dcm",
        "JPEG2000.dcm",
        "693_J2KI.dcm",
        "image_dfl.dcm",
        "SC_rgb_rle_32bit_2frame.dcm",
    ],
)
def test_lossy_and_other_syntaxes_decode(name: str) -> None:
    frames = prepare_dataset(read_testdata(name), max_pixels=LIMIT)
    assert frames and all(f.image.dtype == np.uint8 and f.image.std() > 1 for f in frames)


def _assert_phi_free(message: str, ds: Dataset) -> None:
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(keyword, "") or "")
        if value:
            assert value not in message


def test_undecodable_jpeg_raises_a_clear_error() -> None:
    ds = read_testdata("JPEG-lossy.dcm")
    with pytest.raises(UnsupportedImageError, match="could not be decoded") as caught:
        prepare_dataset(ds, max_pixels=LIMIT)
    assert "JPEG Extended" in str(caught.value)
    _assert_phi_free(str(caught.value), ds)


def test_truncated_pixel_data_raises() -> None:
    ds = read_testdata("MR_truncated.dcm")
    with pytest.raises(UnsupportedImageError) as caught:
        prepare_dataset(ds, max_pixels=LIMIT)
    _assert_phi_free(str(caught.value), ds)


def test_huge_declared_size_is_refused_before_decoding() -> None:
    ds = read_testdata("CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000  # the pixel data is still 32 KiB
    started = time.perf_counter()
    with pytest.raises(UnsupportedImageError, match="exceed the limit") as caught:
        prepare_dataset(ds, max_pixels=1_000_000_000)
    assert time.perf_counter() - started < 0.5
    _assert_phi_free(str(caught.value), ds)
    small = read_testdata("CT_small.dcm")
    check_pixel_budget(small, 128 * 128)
    with pytest.raises(UnsupportedImageError):
        check_pixel_budget(small, 128 * 128 - 1)


def test_instances_without_pixels_or_uid_are_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="no pixel data"):
        prepare_dataset(read_testdata("rtplan.dcm"), max_pixels=LIMIT)
    ds = read_testdata("CT_small.dcm")
    del ds.SOPInstanceUID
    with pytest.raises(UnsupportedImageError, match="SOP Instance UID"):
        prepare_dataset(ds, max_pixels=LIMIT)
    ds = read_testdata("CT_small.dcm")
    ds.Rows = 0
    with pytest.raises(UnsupportedImageError):
        prepare_dataset(ds, max_pixels=LIMIT)


def test_dataset_without_file_meta_decodes_as_native() -> None:
    ds = read_testdata("MR_small.dcm")
    reference = _only(copy.deepcopy(ds))
    del ds.file_meta
    np.testing.assert_array_equal(_only(ds), reference)


def test_png_and_jpeg_files(tmp_path: Path) -> None:
    grey = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    image = image_from_file(tmp_path / "grey.png")
    assert image.shape == (32, 48, 3)
    np.testing.assert_array_equal(image[:, :, 1], grey)

    deep = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    scaled = image_from_file(tmp_path / "deep.png")
    assert scaled[:, :, 0].min() == 0 and scaled[:, :, 0].max() == 255

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image_from_file(tmp_path / "rgba.png")[0, 0], [200, 0, 0])

    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 2] = 180
    Image.fromarray(colour).save(tmp_path / "blue.jpg", quality=95)
    assert abs(int(image_from_file(tmp_path / "blue.jpg")[8, 8, 2]) - 180) <= 3

    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(UnsupportedImageError, match=r"junk\.png"):
        image_from_file(tmp_path / "junk.png")
    with pytest.raises(UnsupportedImageError, match="exceed"):
        image_from_file(tmp_path / "grey.png", max_pixels=100)


def test_frames_from_file_reads_dicom_and_pictures(tmp_path: Path) -> None:
    frames = frames_from_file(pydicom_file("SC_rgb_rle_2frame.dcm"), max_pixels=LIMIT)
    assert len(frames) == 2
    cv2.imwrite(str(tmp_path / "x.png"), np.full((5, 7), 9, np.uint8))
    assert frames_from_file(tmp_path / "x.png", max_pixels=LIMIT)[0].shape == (5, 7, 3)
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(UnsupportedImageError):
        frames_from_file(tmp_path / "broken.dcm", max_pixels=LIMIT)


def test_written_synthetic_dicom_round_trips(tmp_path: Path) -> None:
    from samie_node.testing.synthetic import LESION_KINDS, write_lesion_dataset

    written = write_lesion_dataset(tmp_path, n_per_class=1, size=40, image_format="dicom", seed=3)
    for kind in LESION_KINDS:
        ds = pydicom.dcmread(written[kind][0])
        image = _only(ds)
        assert image.shape == (40, 40, 3)
        np.testing.assert_array_equal(image[:, :, 0], image[:, :, 1])
