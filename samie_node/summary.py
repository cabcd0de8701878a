"""What processing a study produced, as the index, ``status``, the demo and the console read it.

:class:`StudySummary` is written to the study's index row as JSON when the study is done and read back
with :meth:`StudySummary.from_dict`, so every reader sees the same typed fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassificationSummary:
    """The study's predicted class, its probability, and how the per-image probabilities were combined."""

    label: str
    probability: float
    model: str = ""
    combined: str = ""


@dataclass(frozen=True)
class OutputFile:
    """One DICOM object the node wrote for the study."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StudySummary:
    """The outcome of one study's processing.

    Attributes
    ----------
    images, frames
        Source images used and the frames they held.
    frames_with_region, regions
        Frames with at least one region, and the regions found in all frames.
    classification
        The study's class, or None when no classifier is configured.
    outputs
        Objects written, by kind (SEG, SR, SC).
    skipped
        Instances not used, by reason.
    notes
        What a reader should know (a SEG that could not be written, and why).
    timings_ms
        Time per stage.
    model_version
        The identity of the models (also in the output UIDs).
    output_files
        Every object written.
    images_digest
        Fingerprint of the SOP Instance UIDs of the images processed automatically: an annotation arriving
        later, with no new image, re-opens the study for its prompts alone.
    answered_annotations
        SOP Instance UIDs of the annotation objects (SRs, presentation states) answered with a prompted SEG.
    """

    images: int
    frames: int
    frames_with_region: int
    regions: int
    classification: ClassificationSummary | None
    outputs: dict[str, int]
    skipped: dict[str, int]
    notes: list[str]
    timings_ms: dict[str, float]
    model_version: str
    output_files: list[OutputFile] = field(default_factory=list)
    images_digest: str = ""
    answered_annotations: list[str] = field(default_factory=list)

    NO_CLASSIFIER = "no classifier configured: no classification was made"

    def classification_text(self) -> str:
        """The class and its probability as people read it, or the statement that there is none."""
        if self.classification is None:
            return self.NO_CLASSIFIER
        return f"{self.classification.label} ({self.classification.probability:.2f})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the index's ``result`` column)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySummary | None:
        """Read a summary back from the index; None for a study without one (not processed yet)."""
        if not data or "images" not in data:
            return None
        classification = data.get("classification")
        return cls(
            images=int(data["images"]),
            frames=int(data.get("frames", 0)),
            frames_with_region=int(data.get("frames_with_region", 0)),
            regions=int(data.get("regions", 0)),
            classification=ClassificationSummary(**classification) if isinstance(classification, dict) else None,
            outputs=dict(data.get("outputs", {})),
            skipped=dict(data.get("skipped", {})),
            notes=list(data.get("notes", [])),
            timings_ms=dict(data.get("timings_ms", {})),
            model_version=str(data.get("model_version", "")),
            output_files=[OutputFile(**item) for item in data.get("output_files", [])],
            images_digest=str(data.get("images_digest", "")),
            answered_annotations=[str(uid) for uid in data.get("answered_annotations", [])],
        )
