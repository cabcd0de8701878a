"""Which instances of a study the engine looks at, decided from headers alone (no pixel decoding).

Images are kept when they have pixel data, a configured modality and no excluded image type. Everything
else is skipped with a reason the study result records: SEG, SR, presentation states, key objects and
other objects without pixels; localizers, screen saves and dose screens; and the node's own secondary
capture overlays when a PACS sends them back (which would otherwise loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from samie_node.config import SelectionSettings

SEGMENTATION_SOP_CLASS_UIDS = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.481.",  # radiotherapy objects
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Candidate:
    """An instance of the study: its file and its header (read without pixel data)."""

    path: Path
    header: Dataset


@dataclass(frozen=True)
class Selection:
    """The images to process and, per reason, how many instances were skipped."""

    images: list[Candidate]
    skipped: Counter[str]


def skip_reason(header: Dataset, settings: SelectionSettings, own_manufacturer: str) -> str | None:
    """Why this instance is not an image the engine should process, or None to process it."""
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class in SEGMENTATION_SOP_CLASS_UIDS:
        return "segmentation object"
    if sop_class.startswith(_NON_IMAGE_PREFIXES):
        return "not an image (SR, presentation state, waveform, document or RT object)"
    if not any(keyword in header for keyword in _PIXEL_KEYWORDS) or not header.get("Rows"):
        return "no pixel data"
    modality = str(header.get("Modality", "") or "")
    if modality and modality not in settings.modalities:
        return f"modality {modality} not selected"
    image_type = {str(value).upper() for value in (header.get("ImageType") or [])}
    excluded = image_type.intersection(t.upper() for t in settings.skip_image_types)
    if excluded:
        return f"image type {sorted(excluded)[0]}"
    if str(header.get("Manufacturer", "")) == own_manufacturer and str(header.get("BurnedInAnnotation", "")) == "YES":
        return "the node's own overlay"
    return None


def select_images(candidates: Sequence[Candidate], settings: SelectionSettings, own_manufacturer: str) -> Selection:
    """Apply :func:`skip_reason` to every instance and cap the number of images per study."""
    images: list[Candidate] = []
    skipped: Counter[str] = Counter()
    for candidate in candidates:
        reason = skip_reason(candidate.header, settings, own_manufacturer)
        if reason is not None:
            skipped[reason] += 1
        elif len(images) >= settings.max_images_per_study:
            skipped["over the per-study image limit"] += 1
        else:
            images.append(candidate)
    return Selection(images, skipped)
