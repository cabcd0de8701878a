"""Secondary Capture overlays: the mask outline burned into a copy of the image, captioned as not for
diagnostic use.

For PACS and viewers that cannot show SEG (configured per destination), and for sources a SEG cannot
reference (multi-frame images without a Frame of Reference).
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from samie_node.errors import EncodeError


def burn_outline(image: np.ndarray, mask: np.ndarray, caption: str, rgb: tuple[int, int, int]) -> np.ndarray:
    """An RGB copy of ``image`` with the outline of ``mask`` drawn in ``rgb`` and ``caption`` at the top."""
    canvas = np.ascontiguousarray(image.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(mask.shape) / 256))
    cv2.drawContours(canvas, contours, -1, rgb, thickness)
    scale = max(0.35, min(canvas.shape[:2]) / 900)
    (width, height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(canvas, (0, 0), (min(width + 8, canvas.shape[1]), height + baseline + 8), (0, 0, 0), -1)
    cv2.putText(canvas, caption, (4, height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it has two valid values, else None."""
    value = source.get("PatientOrientation")
    if not value or len(value) != 2:
        return None
    try:
        row, column = (hd.PatientOrientationValuesBiped(str(v)).value for v in value)
    except ValueError:
        return None
    return row, column


def build_overlay(
    source: Dataset,
    overlay: np.ndarray,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    manufacturer: str,
    series_description: str,
) -> hd.sc.SCImage:
    """A Secondary Capture in the source's study holding ``overlay`` (rows, columns, 3) uint8 RGB.

    Raises
    ------
    EncodeError
        If highdicom refuses the object.
    """
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(overlay, dtype=np.uint8),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer[:64],
            patient_orientation=_orientation(source) or ("L", "F"),
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise EncodeError(f"highdicom refused the secondary capture: {exc}") from exc
    if _orientation(source) is None:
        # highdicom insists on an orientation; the truth is that none is known, which General Image
        # (Type 2) says with an empty value.
        sc.PatientOrientation = []
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:  # General Series, Type 2C: copied from the source, empty when unknown
        sc.Laterality = source.get("Laterality", "")
    sc.SeriesDescription = series_description[:64]
    sc.ImageComments = "NOT FOR DIAGNOSTIC USE"
    return sc
