"""From a DICOM instance (or a PNG/JPEG file) to the 8-bit RGB frames the models see.

The Segment Anything models and the classifiers take 8-bit RGB. A DICOM image reaches that form the way a
viewer would display it (PS3.3 C.11 grayscale pipeline, C.7.6.3 colour):

1. the declared size (rows x columns x frames x samples) is checked against a limit *before* any
   decoding, so a hostile header cannot make the node allocate gigabytes;
2. frames are decoded one at a time by pydicom's decoders (pylibjpeg, openjpeg and pyjpegls plugins for
   JPEG, JPEG-LS, JPEG 2000 and RLE); YBR colour is converted to RGB by the decoder;
3. grayscale: modality LUT or rescale (per frame when the functional groups say so), then the VOI LUT
   or the first window (linear, linear exact or sigmoid), or, when the file gives neither, a robust
   0.5 - 99.5 percentile window, so one bright marker does not flatten the anatomy;
   MONOCHROME1 (and a Presentation LUT Shape of INVERSE) is inverted so that bright means dense;
   for MedSAM (``windowing="medsam"``) CT and MR take the windows MedSAM was trained on instead of the
   file's (CT level 40 / width 400; MR 0.5 - 99.5 percentiles of the non-zero values), since a file's
   lung or bone window would show MedSAM an image unlike its training data;
4. palette colour goes through its lookup tables; RGB deeper than 8 bits is scaled to 8 bits.

Each frame keeps its source SOP Instance UID and 1-based frame number, which the SEG and SR use to point
back at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from samie_node.errors import UnsupportedImageError

#: UCUM's Hounsfield unit, the unit of CT modality values.
HOUNSFIELD_UNIT = "[hnsf'U]"

#: The percentiles of the fallback window: wide enough for the anatomy, deaf to a few extreme pixels.
#: MedSAM's MR window uses the same ones, of the non-zero values.
FALLBACK_PERCENTILES = (0.5, 99.5)
#: MedSAM's CT window (``pre_CT_MR.py``): soft tissue, level 40 HU, width 400 HU.
MEDSAM_CT_LEVEL, MEDSAM_CT_WIDTH = 40.0, 400.0

#: ``display``: as a viewer shows the image (the file's VOI); ``medsam``: MedSAM's CT/MR windows.
Windowing = Literal["display", "medsam"]

_GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class PreparedFrame:
    """One frame of a source instance, ready for the models.

    Attributes
    ----------
    image
        (rows, columns, 3) uint8 RGB.
    sop_instance_uid
        The source instance.
    frame_number
        1-based frame of the source instance (1 for single-frame images), as SEG and SR reference it.
    pixel_spacing
        (row, column) spacing in mm from Pixel Spacing (top level or the pixel measures functional
        group), None when the file does not give one.
    values
        (rows, columns) modality values of a grayscale frame (Hounsfield units on CT), for region
        statistics; None for colour images, where a mean value would mean nothing.
    value_unit
        The UCUM unit of ``values``.
    modality
        The source's DICOM Modality (it chooses the automatic mode's structure profile).
    """

    image: np.ndarray
    sop_instance_uid: str
    frame_number: int
    pixel_spacing: tuple[float, float] | None
    values: np.ndarray | None = None
    value_unit: str = ""
    modality: str = ""


def _int_attribute(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise UnsupportedImageError(f"image has no usable {keyword}")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(f"image has an invalid {keyword}") from exc
    return number


def declared_pixel_count(dataset: Dataset) -> int:
    """Return rows x columns x frames x samples as the header declares them, without decoding.

    Raises
    ------
    UnsupportedImageError
        If the dataset has no pixel data or a size attribute is missing, not a number or not positive.
    """
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise UnsupportedImageError("dataset has no pixel data")
    rows = _int_attribute(dataset, "Rows")
    columns = _int_attribute(dataset, "Columns")
    frames = _int_attribute(dataset, "NumberOfFrames", 1)
    samples = _int_attribute(dataset, "SamplesPerPixel", 1)
    if min(rows, columns, frames, samples) < 1:
        raise UnsupportedImageError(
            f"image declares a non-positive size ({rows} x {columns}, {frames} frames, {samples} samples)"
        )
    return rows * columns * frames * samples


def check_pixel_budget(dataset: Dataset, max_pixels: int) -> None:
    """Refuse an image whose declared size exceeds ``max_pixels``, before anything is decoded.

    Raises
    ------
    UnsupportedImageError
        If the declared size is over the limit or unusable.
    """
    count = declared_pixel_count(dataset)
    if count > max_pixels:
        raise UnsupportedImageError(
            f"image declares {dataset.Rows} x {dataset.Columns} pixels, "
            f"{_int_attribute(dataset, 'NumberOfFrames', 1)} frame(s), "
            f"{_int_attribute(dataset, 'SamplesPerPixel', 1)} sample(s): {count} values exceed the "
            f"limit of {max_pixels}"
        )


def _transfer_syntax(dataset: Dataset) -> UID:
    file_meta = getattr(dataset, "file_meta", None)
    uid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if uid:
        return UID(str(uid))
    # A dataset built in memory or read without meta information: native encoding is the only guess
    # that can be right, and only when the pixel data is not encapsulated.
    if "PixelData" in dataset and dataset["PixelData"].is_undefined_length:
        raise UnsupportedImageError("encapsulated pixel data without a transfer syntax")
    little_endian = dataset.original_encoding[1] is not False
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _iter_decoded(dataset: Dataset) -> Iterator[tuple[np.ndarray, str]]:
    """Decode frame by frame; yield each frame with the photometric interpretation it now has."""
    syntax = _transfer_syntax(dataset)
    frames = _int_attribute(dataset, "NumberOfFrames", 1)
    where = f"{syntax.name}, {dataset.Rows} x {dataset.Columns}, {frames} frame(s)"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedImageError(f"no pixel data decoder for the transfer syntax ({where})") from exc
    if not decoder.is_available:
        raise UnsupportedImageError(f"the decoder plugins for this transfer syntax are missing ({where})")
    iterator = decoder.iter_array(dataset, as_rgb=True)
    while True:
        try:
            array, meta = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # every plugin raises its own types; the cause stays chained for logs
            raise UnsupportedImageError(f"pixel data could not be decoded ({where}): {type(exc).__name__}") from exc
        yield array, str(meta.get("photometric_interpretation", dataset.get("PhotometricInterpretation")))


def functional_group_item(dataset: Dataset, index: int, sequence: str) -> Dataset | None:
    """Return the first item of a functional group macro for frame ``index``: per-frame wins over shared."""
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = dataset.get(groups_keyword)
        if groups is None or len(groups) <= position:
            continue
        macro = groups[position].get(sequence)
        if macro:
            item: Dataset = macro[0]
            return item
    return None


def _first_number(value: Any) -> float:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Map ``values`` through a VOI window to [0, 255] (PS3.3 C.11.2.1.2)."""
    function = function.upper() if function else "LINEAR"
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        low, span = center - width / 2.0, max(width, 1e-6)
        return np.clip((values - low) / span, 0.0, 1.0) * 255.0
    if width <= 1.0:
        return np.where(values > center - 0.5, 255.0, 0.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) * 255.0


def _percentile_window(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.float64)
    low, high = np.percentile(finite, FALLBACK_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, np.float64)
    display: np.ndarray = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    return display


def modality_values(array: np.ndarray, dataset: Dataset, index: int) -> np.ndarray:
    """The modality transform of one grayscale frame (Hounsfield units on CT), per frame when the
    functional groups say so."""
    rescale = functional_group_item(dataset, index, "PixelValueTransformationSequence")
    if rescale is not None and "RescaleSlope" in rescale:
        values: np.ndarray = array.astype(np.float64) * float(rescale.RescaleSlope) + float(
            rescale.get("RescaleIntercept", 0.0)
        )
        return values
    return np.asarray(apply_modality_lut(array, dataset), dtype=np.float64)


def value_unit(dataset: Dataset) -> str:
    """The unit of the modality values as UCUM writes it: ``[hnsf'U]`` on CT, ``{value}`` otherwise."""
    rescale_type = str(dataset.get("RescaleType", "") or "").upper()
    if rescale_type == "HU" or (str(dataset.get("Modality", "")) == "CT" and rescale_type in ("", "HU")):
        return HOUNSFIELD_UNIT
    return "{value}"


def _voi_display(values: np.ndarray, dataset: Dataset, index: int) -> np.ndarray:
    """The VOI transform as a viewer applies it: LUT, else window, else the percentile fallback; [0, 255]."""
    frame_voi = functional_group_item(dataset, index, "FrameVOILUTSequence")
    voi_source = frame_voi if frame_voi is not None and "WindowWidth" in frame_voi else dataset
    if "VOILUTSequence" in dataset and voi_source is dataset:
        lut = dataset.VOILUTSequence[0]
        lut_values = np.asarray(lut.LUTData, dtype=np.float64).ravel()
        low, high = float(lut_values.min()), float(lut_values.max())
        lut_input = np.rint(values).astype(np.int64)  # LUT entries are indexed by integer values
        mapped = np.asarray(apply_voi_lut(lut_input, dataset, index=0, prefer_lut=True), dtype=np.float64)
        return np.clip((mapped - low) / (high - low), 0.0, 1.0) * 255.0 if high > low else np.zeros_like(mapped)
    if "WindowCenter" in voi_source and "WindowWidth" in voi_source:
        return _window(
            values,
            _first_number(voi_source.WindowCenter),
            _first_number(voi_source.WindowWidth),
            str(voi_source.get("VOILUTFunction", "LINEAR")),
        )
    return _percentile_window(values)


def medsam_window(values: np.ndarray, modality: str) -> np.ndarray | None:
    """MedSAM's own CT and MR intensity windows (its ``pre_CT_MR.py``), to [0, 255]; None for other modalities.

    CT: Hounsfield units clipped to level 40 / width 400 and scaled linearly. MedSAM min-max scaled the
    clipped *volume*, which is this fixed mapping whenever the volume holds air and bone (every body CT).
    MR: clipped to the 0.5 - 99.5 percentiles of the non-zero values and scaled, zeros kept at zero;
    MedSAM took the percentiles over the volume, here they are taken over each frame, because frames
    are prepared one at a time.
    """
    if modality == "CT":
        low, high = MEDSAM_CT_LEVEL - MEDSAM_CT_WIDTH / 2.0, MEDSAM_CT_LEVEL + MEDSAM_CT_WIDTH / 2.0
        scaled: np.ndarray = (np.clip(values, low, high) - low) / (high - low) * 255.0
        return scaled
    if modality != "MR":
        return None
    foreground = values[np.isfinite(values) & (values > 0)]
    if foreground.size == 0:
        return np.zeros(values.shape, np.float64)
    low, high = np.percentile(foreground, FALLBACK_PERCENTILES)
    if high <= low:
        return np.where(values > 0, 255.0, 0.0)
    scaled = (np.clip(values, low, high) - low) / (high - low) * 255.0
    scaled[values == 0] = 0.0
    return scaled


def _grayscale_to_8bit(values: np.ndarray, dataset: Dataset, index: int, windowing: Windowing) -> np.ndarray:
    """VOI transform of one frame's modality values, to display values in [0, 255].

    With ``windowing="medsam"``, CT and MR frames get MedSAM's windows instead of the file's VOI, cast
    to 8 bits by truncation as MedSAM's ``np.uint8`` did; other modalities keep the display pipeline,
    which is what MedSAM's 2-D images (exported PNG/JPEG) had been through.
    """
    medsam = medsam_window(values, str(dataset.get("Modality", ""))) if windowing == "medsam" else None
    display = medsam if medsam is not None else _voi_display(values, dataset, index)
    inverted = str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE":
        inverted = not inverted
    if inverted:
        display = 255.0 - display
    rounded: np.ndarray = np.floor(display) if medsam is not None else np.rint(display)
    return rounded.astype(np.uint8)


def _colour_to_8bit(array: np.ndarray, photometric: str, dataset: Dataset) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, dataset)
        scale = 255.0 / 65535.0 if rgb.dtype.itemsize > 1 else 1.0
        return np.rint(rgb.astype(np.float64) * scale).astype(np.uint8)
    if photometric != "RGB" or array.ndim != 3 or array.shape[-1] != 3:
        raise UnsupportedImageError(f"photometric interpretation {photometric!r} is not supported")
    bits = _int_attribute(dataset, "BitsStored", 8)
    if array.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(array)
    top = float(2**bits - 1)
    return np.rint(np.clip(array.astype(np.float64) / top, 0.0, 1.0) * 255.0).astype(np.uint8)


def pixel_spacing(dataset: Dataset, index: int = 0) -> tuple[float, float] | None:
    """Return (row, column) Pixel Spacing in mm for frame ``index`` (0-based), None if not given."""
    measures = functional_group_item(dataset, index, "PixelMeasuresSequence")
    for source in (measures, dataset):
        if source is not None and source.get("PixelSpacing"):
            try:
                row, column = (float(v) for v in source.PixelSpacing[:2])
            except (TypeError, ValueError):
                return None
            if row > 0 and column > 0:
                return (row, column)
    return None


def prepare_dataset(dataset: Dataset, *, max_pixels: int, windowing: Windowing = "display") -> list[PreparedFrame]:
    """Turn every frame of an image instance into an 8-bit RGB :class:`PreparedFrame`.

    Parameters
    ----------
    dataset
        A DICOM image instance, with its file meta information when it was read from a file (the
        transfer syntax comes from there; without it native little endian is assumed).
    max_pixels
        Upper bound on rows x columns x frames x samples, checked before decoding.
    windowing
        ``display`` (the file's VOI, as a viewer shows it) or ``medsam`` (MedSAM's CT and MR windows,
        :func:`medsam_window`).

    Raises
    ------
    UnsupportedImageError
        If the instance has no SOP Instance UID or no pixel data, is too large, cannot be decoded
        (unknown or broken compression, truncated pixel data) or has a colour model the node does not
        handle. The message carries sizes and the transfer syntax, never patient data.
    """
    sop_instance_uid = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop_instance_uid:
        raise UnsupportedImageError("image has no SOP Instance UID")
    check_pixel_budget(dataset, max_pixels)
    photometric_declared = str(dataset.get("PhotometricInterpretation", ""))
    frames: list[PreparedFrame] = []
    for index, (array, photometric) in enumerate(_iter_decoded(dataset)):
        if photometric in _GRAYSCALE or photometric_declared in _GRAYSCALE:
            if array.ndim != 2:
                raise UnsupportedImageError("grayscale image with more than one sample per pixel")
            values = modality_values(array, dataset, index)
            grey = _grayscale_to_8bit(values, dataset, index, windowing)
            image = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            values = None
            image = _colour_to_8bit(array, photometric, dataset)
        frames.append(
            PreparedFrame(
                image=image,
                sop_instance_uid=sop_instance_uid,
                frame_number=index + 1,
                pixel_spacing=pixel_spacing(dataset, index),
                values=None if values is None else values.astype(np.float32),
                value_unit="" if values is None else value_unit(dataset),
                modality=str(dataset.get("Modality", "") or ""),
            )
        )
    if not frames:
        raise UnsupportedImageError("pixel data holds no frames")
    return frames


def is_dicom_file(path: Path) -> bool:
    """Return True when ``path`` starts with the DICOM preamble and ``DICM`` prefix (PS3.10 7.1)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(132)
    except OSError:
        return False
    return len(header) == 132 and header[128:132] == b"DICM"


def image_from_file(path: Path, *, max_pixels: int = 100_000_000) -> np.ndarray:
    """Read a PNG or JPEG (or any format Pillow knows) as (H, W, 3) uint8 RGB.

    8-bit grey and palette images are expanded to RGB, alpha is dropped, 16-bit and float images are
    scaled by their own minimum and maximum. The size is checked from the header before decoding.

    Raises
    ------
    UnsupportedImageError
        If the file cannot be read as an image or is larger than ``max_pixels``.
    """
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            bands = len(picture.getbands())
            if width * height * bands > max_pixels:
                raise UnsupportedImageError(
                    f"{path.name}: {width} x {height} x {bands} values exceed the limit of {max_pixels}"
                )
            if picture.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                values = np.asarray(picture, dtype=np.float64)
                low, high = float(values.min()), float(values.max())
                scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
                grey = np.rint(scaled).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.ascontiguousarray(np.asarray(picture.convert("RGB"), dtype=np.uint8))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UnsupportedImageError(f"{path.name}: not a readable image ({type(exc).__name__})") from exc


def frames_from_file(path: Path, *, max_pixels: int) -> list[np.ndarray]:
    """Read a DICOM, PNG or JPEG file as a list of (H, W, 3) uint8 RGB frames.

    This is the entry point of the offline tools (``enhance``, ``train``), which take files of either kind.

    Raises
    ------
    UnsupportedImageError
        If the file is neither a usable DICOM image nor a readable picture.
    """
    if is_dicom_file(path) or path.suffix.lower() == ".dcm":
        try:
            dataset = pydicom.dcmread(path, force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise UnsupportedImageError(f"{path.name}: not a readable DICOM file") from exc
        return [frame.image for frame in prepare_dataset(dataset, max_pixels=max_pixels)]
    return [image_from_file(path, max_pixels=max_pixels)]
