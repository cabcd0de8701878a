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

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from samie_node.config import SelectionSettings
from samie_node.errors import InvalidUidError
from samie_node.uids import require_uid

SEGMENTATION_SOP_CLASS_UIDS = frozenset({SegmentationStorage, "1.2.840.10008.5.1.4.1.1.66.7"})  # binary, label map
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


def nesting_depth(dataset: Dataset) -> int:
    """How deeply sequences nest in ``dataset`` (0 for none), walked without recursion."""
    deepest = 0
    stack = [(dataset, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for element in current:
            if element.VR == "SQ":
                stack.extend((item, depth + 1) for item in element.value)
    return deepest


#: UIDs a source image must carry, valid, before the encoders copy them or look SOP classes up by them.
_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def first_invalid_uid(header: Dataset) -> str | None:
    """The keyword of the first missing or malformed UID of a source image (Frame of Reference UID only
    when present), or None when all are valid."""
    present = [*_SOURCE_UIDS] + (["FrameOfReferenceUID"] if "FrameOfReferenceUID" in header else [])
    for keyword in present:
        try:
            require_uid(header.get(keyword), keyword)
        except InvalidUidError:
            return keyword
    return None


def read_candidates(paths: Sequence[Path], max_sequence_depth: int) -> tuple[list[Candidate], Counter[str]]:
    """Read every file's header (pixel data deferred); unreadable or too deeply nested files are counted,
    not fatal. pydicom parses sequences recursively, so an absurd nesting ends as a RecursionError here,
    and a merely deep one is refused by ``limits.max_sequence_depth`` before anything else walks it."""
    candidates: list[Candidate] = []
    unreadable: Counter[str] = Counter()
    for path in paths:
        try:
            # Large values (pixel data) are deferred, not read: the header still shows that they exist.
            header = pydicom.dcmread(path, defer_size=4096)
            too_deep = nesting_depth(header) > max_sequence_depth  # also converts every value once
        except Exception as exc:  # any malformed file (bad VR, bad value): counted, the rest carries on
            unreadable[f"unreadable file ({type(exc).__name__})"] += 1
            continue
        if too_deep:
            unreadable[f"sequences nested deeper than {max_sequence_depth}"] += 1
            continue
        bad_uid = first_invalid_uid(header)
        if bad_uid:
            unreadable[f"invalid {bad_uid}"] += 1
            continue
        candidates.append(Candidate(path, header))
    return candidates, unreadable


def load_study(
    paths: Sequence[Path], settings: SelectionSettings, *, max_sequence_depth: int, own_manufacturer: str
) -> Selection:
    """Read the headers of a study's files and select its images; everything else is counted by reason."""
    candidates, unreadable = read_candidates(paths, max_sequence_depth)
    selection = select_images(candidates, settings, own_manufacturer)
    selection.skipped.update(unreadable)
    return selection
