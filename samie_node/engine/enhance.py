"""SAM-IE: fold a segmenter's masks into the image a classifier sees.

SAM-IE (SAM-based Image Enhancement) gives a classifier the structures SAM found as extra input
channels instead of asking it to discover them. From the masks of one image it builds

* the **binary mask**: the union of all kept masks (a pixel is in it when any mask covers it);
* the **contour map**: the border of every mask drawn one pixel wide at 255 on 0, so borders between
  touching or nested masks show too;
* the **enhanced image**, three channels: the original grey image inside the binary mask (0 outside),
  the contour map, and the original grey image.

The seed code for the method summed the masks into a "binary" mask (overlaps count twice and overflow
8 bits) and drew its contours at value 1 before a later division by 255 erased them; here the mask is a
true union and the contours are 0/255, which is what the method describes.

:func:`samaug` is the SAMAug variant: the per-pixel sum of the stability scores of the masks covering it
(the segmentation prior) and the mask boundaries (the boundary prior) are added to the second and third
image channels.

Everything is deterministic numpy and OpenCV: the same image and masks give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from samie_node.engine.masks import MaskSet, Segmenter
from samie_node.engine.prepare import frames_from_file
from samie_node.errors import SamieNodeError

#: Overlay colours (RGB) of :func:`overlay`: masks in a translucent green, contours in yellow.
MASK_COLOUR = (0, 200, 0)
CONTOUR_COLOUR = (255, 230, 0)
#: Colours of the individual masks in the ``_masks.png`` label picture, cycled.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
)
#: The enhancement methods, as the command line and checkpoints name them.
METHOD_NAMES = ("sam_ie", "samaug")


@dataclass(frozen=True)
class Enhanced:
    """The SAM-IE (or SAMAug) result for one image.

    Attributes
    ----------
    binary_mask
        (H, W) bool, union of the masks.
    contour_map
        (H, W) uint8, 255 on mask borders, 0 elsewhere.
    image
        (H, W, 3) uint8, the enhanced image for the classifier.
    """

    binary_mask: np.ndarray
    contour_map: np.ndarray
    image: np.ndarray


def _check(image: np.ndarray, masks: MaskSet) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an (H, W, 3) uint8 array")
    if masks.masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks are {masks.masks.shape[1:]}, image is {image.shape[:2]}")


def grey_of(image: np.ndarray) -> np.ndarray:
    """The grey image SAM-IE works on: channel 0 of a grey-as-RGB image, else ITU-R BT.601 luma."""
    if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2]):
        return np.ascontiguousarray(image[:, :, 0])
    grey: np.ndarray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return grey


def union_mask(masks: MaskSet) -> np.ndarray:
    """(H, W) bool: the pixels covered by at least one mask."""
    union: np.ndarray = np.any(masks.masks, axis=0)
    return union


def contour_map(masks: MaskSet) -> np.ndarray:
    """(H, W) uint8: the border pixels of every mask (outer borders and holes) at 255, else 0.

    Borders are traced by OpenCV's border following (8-connected, every point kept) and drawn one
    pixel wide; a mask that reaches the image edge gets a border along the edge.
    """
    height, width = masks.masks.shape[1:]
    drawn = np.zeros((height, width), np.uint8)
    for mask in masks.masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(drawn, contours, -1, 255, 1)
    return drawn


def sam_ie(image: np.ndarray, masks: MaskSet) -> Enhanced:
    """Build the SAM-IE enhanced image of ``image`` from its ``masks``.

    Parameters
    ----------
    image
        (H, W, 3) uint8 RGB, the image the masks were made on.
    masks
        The segmenter's masks for it; none gives an enhanced image whose first two channels are 0.

    Returns
    -------
    Enhanced
        Channels: grey x binary mask, contour map, grey.

    Raises
    ------
    ValueError
        If the image is not (H, W, 3) uint8 or the masks are of another size.
    """
    _check(image, masks)
    grey = grey_of(image)
    binary = union_mask(masks)
    contours = contour_map(masks)
    fused = np.stack([np.where(binary, grey, 0).astype(np.uint8), contours, grey], axis=-1)
    return Enhanced(binary_mask=binary, contour_map=contours, image=fused)


def samaug(image: np.ndarray, masks: MaskSet) -> Enhanced:
    """Build the SAMAug-style image: segmentation and boundary priors added to the image channels.

    With the image scaled to [0, 1], the segmentation prior ``S`` is the sum of the stability scores of
    the masks covering each pixel (clipped to 1) and the boundary prior ``B`` is the contour map in
    {0, 1}. The result keeps channel 0 and replaces channels 1 and 2 by ``(I1 + S) / 2`` and
    ``(I2 + B) / 2``, so it stays in 8 bits without saturating where a prior meets bright tissue.

    Raises
    ------
    ValueError
        If the image is not (H, W, 3) uint8 or the masks are of another size.
    """
    _check(image, masks)
    prior = np.tensordot(masks.stability_score.astype(np.float64), masks.masks.astype(np.float64), axes=1)
    contours = contour_map(masks)
    scaled = image.astype(np.float64) / 255.0
    scaled[:, :, 1] = (scaled[:, :, 1] + np.clip(prior, 0.0, 1.0)) / 2.0
    scaled[:, :, 2] = (scaled[:, :, 2] + contours / 255.0) / 2.0
    augmented = np.rint(scaled * 255.0).astype(np.uint8)
    return Enhanced(binary_mask=union_mask(masks), contour_map=contours, image=augmented)


def overlay(image: np.ndarray, enhanced: Enhanced, *, alpha: float = 0.35) -> np.ndarray:
    """An (H, W, 3) uint8 picture for people: masks tinted green, contours yellow, over the image."""
    picture = image.astype(np.float32)
    tint = np.asarray(MASK_COLOUR, np.float32)
    picture[enhanced.binary_mask] = (1.0 - alpha) * picture[enhanced.binary_mask] + alpha * tint
    picture[enhanced.contour_map > 0] = np.asarray(CONTOUR_COLOUR, np.float32)
    result: np.ndarray = np.rint(picture).astype(np.uint8)
    return result


def enhancement_method(name: str) -> Callable[[np.ndarray, MaskSet], Enhanced]:
    """The enhancement function called ``name`` (``sam_ie`` or ``samaug``).

    Raises
    ------
    ValueError
        If there is no such method.
    """
    if name == "sam_ie":
        return sam_ie
    if name == "samaug":
        return samaug
    raise ValueError(f"unknown enhancement {name!r}; expected one of {METHOD_NAMES}")


def label_picture(masks: MaskSet) -> np.ndarray:
    """(H, W, 3) uint8: each mask in its own colour (later masks on top), black where there is none."""
    height, width = masks.masks.shape[1:]
    picture = np.zeros((height, width, 3), np.uint8)
    for index, mask in enumerate(masks.masks):
        picture[mask] = PALETTE[index % len(PALETTE)]
    return picture


def write_pngs(out_dir: Path, stem: str, image: np.ndarray, masks: MaskSet, enhanced: Enhanced) -> list[Path]:
    """Write ``<stem>_mask.png`` (union, 0/255), ``_masks.png`` (one colour per mask), ``_contours.png``,
    ``_enhanced.png`` and ``_overlay.png``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = {
        "mask": enhanced.binary_mask.astype(np.uint8) * 255,
        "masks": label_picture(masks),
        "contours": enhanced.contour_map,
        "enhanced": enhanced.image,
        "overlay": overlay(image, enhanced),
    }
    written = []
    for suffix, picture in pictures.items():
        path = out_dir / f"{stem}_{suffix}.png"
        bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR) if picture.ndim == 3 else picture
        if not cv2.imwrite(str(path), bgr):
            raise OSError(f"cannot write {path}")
        written.append(path)
    return written


def enhance_files(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    segmenter: Segmenter,
    box: np.ndarray | None = None,
    method: str = "sam_ie",
    max_pixels: int = 100_000_000,
    on_error: Callable[[Path, SamieNodeError], None] | None = None,
) -> list[Path]:
    """Segment and enhance DICOM, PNG or JPEG files and write the PNGs of :func:`write_pngs` per frame.

    Parameters
    ----------
    paths
        The input files; a multi-frame DICOM gives one set of PNGs per frame (``<stem>_f<n>_...``).
    out_dir
        Where the PNGs go.
    segmenter
        The model.
    box
        A (4,) or (K, 4) x0, y0, x1, y1 prompt applied to every image; None uses the segmenter's mode.
    method
        ``sam_ie`` or ``samaug``.
    on_error
        Called with a file that cannot be used and the reason; the others are still processed. Without
        it the error is raised.

    Returns
    -------
    list of Path
        Every PNG written.
    """
    enhance = enhancement_method(method)
    written: list[Path] = []
    used: set[str] = set()
    for path in paths:
        try:
            frames = frames_from_file(path, max_pixels=max_pixels)
        except SamieNodeError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        boxes = [None if box is None else np.asarray(box, np.float32).reshape(-1, 4)] * len(frames)
        mask_sets = segmenter.segment(frames, boxes)
        stem = path.stem
        while stem in used:
            stem += "-"
        used.add(stem)
        for number, (frame, masks) in enumerate(zip(frames, mask_sets, strict=True), start=1):
            name = stem if len(frames) == 1 else f"{stem}_f{number}"
            written += write_pngs(out_dir, name, frame, masks, enhance(frame, masks))
    return written
