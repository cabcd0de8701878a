"""Codes, labels and wording for SEG and SR, read from ``dicom_templates/`` (data, not code).

The folder ships inside the wheel as ``samie_node/dicom_templates``; in a source checkout it is the
top-level ``dicom_templates/``. Both are found without configuration.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from highdicom.sr.coding import CodedConcept
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from samie_node.errors import ConfigError


class Code(BaseModel):
    """A coded concept as written in the template files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str
    value: str
    meaning: str

    def concept(self, **fill: str) -> CodedConcept:
        """The highdicom concept; ``{placeholders}`` in value and meaning are filled from ``fill``."""
        value, meaning = self.value, self.meaning
        if fill:  # UCUM annotations such as {pixels} are literal braces: format only when asked to
            value, meaning = value.format(**fill), meaning.format(**fill)
        return CodedConcept(value=value[:64], scheme_designator=self.scheme, meaning=meaning[:64])


class RegionTemplate(BaseModel):
    """How each region's segment is labelled and coded (``{number}`` in ``label`` is its number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(max_length=60)
    merged_label: str = Field(max_length=64)
    empty_label: str = Field(max_length=64)
    category: Code
    type: Code

    def label_for(self, number: int, *, merged: bool = False) -> str:
        """Region ``number``'s segment label ("Region 3", or the merged label for the last segment)."""
        return self.merged_label if merged else self.label.format(number=number)


class SegmentsTemplate(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    algorithm_family: Code
    region: RegionTemplate
    palette: list[tuple[int, int, int]] = Field(min_length=1)
    content_label: str = Field(max_length=16)
    content_description: str
    series_description: str

    def colour(self, number: int) -> tuple[int, int, int]:
        """The sRGB display colour of segment ``number`` (1-based), cycling through the palette."""
        return self.palette[(number - 1) % len(self.palette)]


class ClassificationTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_identifier: str
    finding_type: Code
    evaluation_name: Code
    probability_name: Code
    combination: Code
    no_classifier: Code


class RegionsTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_identifier: str
    totals_tracking_identifier: str
    finding_type: Code
    area: Code
    total_area: Code
    mean_ct: Code
    mean_unit_ct: Code
    mean_value: Code
    mean_unit_value: Code
    area_unit_mm2: Code
    area_unit_pixels: Code
    count: Code
    count_unit: Code
    images_with_region: Code
    images_unit: Code
    empty_result: Code
    unused_tracking_identifier: str
    unused: Code
    comment: Code


class ReportTemplate(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    title: Code
    procedure_reported: Code
    series_description: str
    classification: ClassificationTemplate
    regions: RegionsTemplate
    probability_unit: Code
    percent_unit: Code
    overlay_caption: str


class Templates(BaseModel):
    """Everything the encoders take from ``dicom_templates/``; ``sha256`` identifies the wording used."""

    model_config = ConfigDict(frozen=True)

    segments: SegmentsTemplate
    report: ReportTemplate
    sha256: str


def templates_dir() -> Path:
    """The template folder: inside the installed package, else the source checkout's top level."""
    packaged = Path(str(resources.files("samie_node"))) / "dicom_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "dicom_templates"


def load_templates(folder: Path | None = None) -> Templates:
    """Read and validate the templates.

    Raises
    ------
    ConfigError
        If a file is missing, is not JSON, or lacks a required code.
    """
    folder = folder or templates_dir()
    digest = hashlib.sha256()
    data = {}
    for name in ("segments", "report"):
        path = folder / f"{name}.json"
        try:
            raw = path.read_bytes()
            data[name] = json.loads(raw)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read DICOM template {path}: {exc}") from exc
        digest.update(raw)
    try:
        return Templates(segments=data["segments"], report=data["report"], sha256=digest.hexdigest())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid DICOM template field {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
