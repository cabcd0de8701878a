"""Drawn boxes answered: an OHIF-style SR on generated phantoms becomes a prompted SEG and SR.

LiteMedSAM with its real weights on the CPU; the phantoms' lesions are known, so the prompted mask is
compared with the truth (Dice), and a box drawn elsewhere must give a mask elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_checks import assert_dciodvfy_clean
from engine_fixtures import dice
from pydicom.dataset import Dataset
from test_annotations import presentation_state

from samie_node.batch import process_paths
from samie_node.config import Settings, load_settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates, load_templates
from samie_node.engine.backend import LocalEngine
from samie_node.engine.models import load_models
from samie_node.engine.selection import Candidate
from samie_node.pipeline import StudyResult
from samie_node.prompted import annotation_objects, encode_prompted, plan_prompts
from samie_node.scheduler import run_one
from samie_node.testing.drawn import rectangle_report
from samie_node.testing.sample_studies import Lesion, ct_series, ultrasound_image, write_datasets
from samie_node.timing import StageTimer

MIN_DICE = 0.9


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None, {"engine": {"device": "cpu"}})


@pytest.fixture(scope="module")
def engine(settings: Settings) -> LocalEngine:
    return LocalEngine(load_models(settings), settings)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return load_templates()


def lesion_box(lesion: Lesion, margin: float = 6.0) -> tuple[float, float, float, float]:
    r = lesion.radius + margin
    return (lesion.center_column - r, lesion.center_row - r, lesion.center_column + r, lesion.center_row + r)


def answer(
    paths: list[Path], engine: LocalEngine, templates: Templates, settings: Settings
) -> tuple[StudyResult, list[Dataset]]:
    images = [Candidate(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    images = [c for c in images if "Rows" in c.header]
    annotations = annotation_objects(paths, settings.output.manufacturer)
    job = plan_prompts(annotations, images)
    timer = StageTimer()
    inference = run_one(engine, job.images, settings, timer, job.frame_prompts())
    models = engine.models_info()
    return encode_prompted(job, inference, models, templates, settings, timer), annotations


def written(result: StudyResult, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for output in result.outputs:
        path = folder / f"{output.kind}.dcm"
        path.write_bytes(encode_file(output.dataset))
        files[output.kind] = path
    return files


def seg_and_sr(result: StudyResult, folder: Path) -> tuple[Dataset, Dataset]:
    """The prompted SEG and SR, written, checked by dciodvfy and read back."""
    files = written(result, folder)
    assert set(files) == {"SEG", "SR"}
    assert_dciodvfy_clean(files["SEG"])
    assert_dciodvfy_clean(files["SR"])
    return pydicom.dcmread(files["SEG"]), pydicom.dcmread(files["SR"])


def evidence_uids(sr: Dataset) -> set[str]:
    """SOP Instance UIDs an SR lists as evidence (current and other)."""
    return {
        str(i.ReferencedSOPInstanceUID)
        for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
        for st in sr.get(seq, [])
        for se in st.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }


def test_rectangle_around_the_lesion_gives_its_mask_and_one_elsewhere_gives_another(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    image, lesion = ultrasound_image(rows=240, columns=320, seed=31)
    elsewhere = (20.0, 20.0, 80.0, 70.0)
    report = rectangle_report(image, [lesion_box(lesion), elsewhere], ["Lesion A", ""])
    paths = write_datasets([image, report], tmp_path / "in")
    result, annotations = answer(paths, engine, templates, settings)
    seg, sr = seg_and_sr(result, tmp_path / "out")
    truth = lesion.mask(240, 320)
    uid = str(image.SOPInstanceUID)
    drawn = result.segment_mask(str(seg.SOPInstanceUID), 1, uid)
    assert dice(drawn, truth) >= MIN_DICE
    other = result.segment_mask(str(seg.SOPInstanceUID), 2, uid)
    assert other.any() and dice(other, truth) < 0.1
    rows, columns = np.nonzero(other)
    assert columns.min() >= 20 and columns.max() < 80 and rows.min() >= 20 and rows.max() < 70
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion A", "Region 2"]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    prompts = settings.prompts
    assert (seg.SeriesNumber, sr.SeriesNumber) == (prompts.series_number_seg, prompts.series_number_sr)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == image.StudyInstanceUID
    evidence = evidence_uids(sr)
    assert {str(seg.SOPInstanceUID), str(annotations[0].SOPInstanceUID), uid} <= evidence
    assert result.summary.answered_annotations == [str(report.SOPInstanceUID)]


def test_ct_slice_box_missing_image_and_degenerate_box(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    ct, lesion = ct_series(slices=3, rows=128, columns=128, seed=32)
    middle = ct[1]
    gone, _ = ct_series(slices=1, rows=128, columns=128, seed=33)
    report = rectangle_report(middle, [lesion_box(lesion, 4.0), (10.0, 10.0, 10.0, 40.0)], ["Sphere"])
    report.ContentSequence[-1].ContentSequence.append(
        rectangle_report(gone[0], [(5.0, 5.0, 50.0, 50.0)]).ContentSequence[-1].ContentSequence[0]
    )
    paths = write_datasets([*ct, report], tmp_path / "in")
    result, _ = answer(paths, engine, templates, settings)
    files = written(result, tmp_path / "out")
    assert_dciodvfy_clean(files["SEG"])
    assert_dciodvfy_clean(files["SR"])
    seg = pydicom.dcmread(files["SEG"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Sphere"]
    drawn = result.segment_mask(str(seg.SOPInstanceUID), 1, str(middle.SOPInstanceUID))
    assert dice(drawn, lesion.mask(128, 128)) >= MIN_DICE
    assert len(seg.PerFrameFunctionalGroupsSequence) == 1  # only the drawn slice
    notes = " ".join(result.summary.notes)
    assert "narrower or lower than a pixel" in notes or "no area" in notes
    assert f"image {gone[0].SOPInstanceUID} is not on the node" in notes


def test_the_nodes_own_reports_and_answered_ones_are_not_prompts(tmp_path: Path, settings: Settings) -> None:
    image, lesion = ultrasound_image(rows=120, columns=160, seed=34)
    theirs = rectangle_report(image, [lesion_box(lesion)])
    own = rectangle_report(image, [lesion_box(lesion)])
    own.Manufacturer = settings.output.manufacturer
    paths = write_datasets([image, theirs, own], tmp_path)
    found = annotation_objects(paths, settings.output.manufacturer)
    assert [str(ds.SOPInstanceUID) for ds in found] == [str(theirs.SOPInstanceUID)]
    assert annotation_objects(paths, settings.output.manufacturer, answered=[str(theirs.SOPInstanceUID)]) == []


def test_process_answers_a_report_given_with_the_images(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    image, lesion = ultrasound_image(rows=160, columns=200, seed=35)
    report = rectangle_report(image, [lesion_box(lesion)], ["Lesion C"])
    write_datasets([image, report], tmp_path / "in")
    outcomes, unusable = process_paths(
        [tmp_path / "in"], tmp_path / "out", engine=engine, templates=templates, settings=settings
    )
    assert unusable == 0 and [o.state for o in outcomes] == ["done"]
    segs = [pydicom.dcmread(p) for p in outcomes[0].outputs if Path(p).name.startswith("SEG")]
    drawn = [s for s in segs if s.SeriesNumber == settings.prompts.series_number_seg]
    assert len(segs) == 2 and len(drawn) == 1
    assert drawn[0].SegmentSequence[0].SegmentLabel == "Lesion C"
    mask = np.asarray(drawn[0].pixel_array, bool).reshape(-1, 160, 200).any(axis=0)
    assert dice(mask, lesion.mask(160, 200)) >= MIN_DICE
    assert outcomes[0].summary["answered_annotations"] == [str(report.SOPInstanceUID)]


# -- regions that give no prompt: stated in the SR ------------------------------------------------------------

NOT_USED = "NOTUSED"  # 99SAMIE: the Finding of each group the SR writes for a drawn region not used
COMMENT = "121106"  # DCM Comment: the text that names the annotation object, where, and why


def _content(item: Dataset) -> list[Dataset]:
    """Every content item below ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        found.append(child)
        found += _content(child)
    return found


def not_used_texts(sr: Dataset) -> list[str]:
    """The Comments of the SR's "drawn region not used" groups, in order."""
    texts = []
    for group in _content(sr):
        children = list(group.get("ContentSequence", []))
        coded = [c.ConceptCodeSequence[0].CodeValue for c in children if c.ValueType == "CODE"]
        if group.ValueType == "CONTAINER" and NOT_USED in coded:
            texts += [str(c.TextValue) for c in children if c.ValueType == "TEXT" and _concept(c) == COMMENT]
    return texts


def _concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item else ""


def no_region_stated(sr: Dataset) -> bool:
    """True when the SR holds the automatic mode's coded "No region was segmented"."""
    return any(
        item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue == "NOREGION" for item in _content(sr)
    )


def test_regions_not_used_are_stated_in_the_sr_beside_the_segmented_one(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    image, lesion = ultrasound_image(rows=240, columns=320, seed=36)
    gone, _ = ultrasound_image(rows=240, columns=320, seed=37)  # an image of the study the node never got
    report = rectangle_report(image, [lesion_box(lesion), (30.0, 30.0, 30.0, 90.0)], ["Lesion D"])
    report.ContentSequence[-1].ContentSequence.append(
        rectangle_report(gone, [(5.0, 5.0, 50.0, 50.0)]).ContentSequence[-1].ContentSequence[0]
    )
    paths = write_datasets([image, report], tmp_path / "in")
    result, _ = answer(paths, engine, templates, settings)
    seg, sr = seg_and_sr(result, tmp_path / "out")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion D"]
    drawn = result.segment_mask(str(seg.SOPInstanceUID), 1, str(image.SOPInstanceUID))
    assert dice(drawn, lesion.mask(240, 320)) >= MIN_DICE
    uid = str(report.SOPInstanceUID)
    assert not_used_texts(sr) == [
        f"Not used: measurement group 2 of annotation {uid}: the outline has no area "
        "(its 2 distinct point(s) lie on one line)",
        f"Not used: region on image {gone.SOPInstanceUID} of annotation {uid}: the node does not have this image",
    ]
    assert not no_region_stated(sr)
    assert sr.SeriesDescription.endswith("(drawn boxes), 2 not used")
    assert str(image.PatientName) not in " ".join(not_used_texts(sr))


def test_drawings_with_no_usable_region_are_answered_by_an_sr_alone(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    image, _ = ultrasound_image(rows=160, columns=200, seed=38)
    report = rectangle_report(image, [(10.0, 10.0, 10.0, 40.0), (300.0, 200.0, 360.0, 260.0)])
    write_datasets([image, report], tmp_path / "in")
    outcomes, unusable = process_paths(
        [tmp_path / "in"], tmp_path / "out", engine=engine, templates=templates, settings=settings
    )
    assert unusable == 0 and [o.state for o in outcomes] == ["done"]
    written_files = [Path(p) for p in outcomes[0].outputs]
    drawn = [p for p in written_files if pydicom.dcmread(p).SeriesNumber in (9904, 9905)]
    assert (settings.prompts.series_number_seg, settings.prompts.series_number_sr) == (9904, 9905)
    assert [p.name.split("-")[0] for p in drawn] == ["SR"]  # no SEG: nothing was segmented
    assert_dciodvfy_clean(drawn[0])
    sr = pydicom.dcmread(drawn[0])
    uid = str(report.SOPInstanceUID)
    assert not_used_texts(sr) == [
        f"Not used: measurement group 1 of annotation {uid}: the outline has no area "
        "(its 2 distinct point(s) lie on one line)",
        f"Not used: region on image {image.SOPInstanceUID} of annotation {uid}: "
        "its box lies outside the 200 x 160 image",
    ]
    assert no_region_stated(sr)
    evidence = evidence_uids(sr)
    assert {uid, str(image.SOPInstanceUID)} <= evidence
    assert outcomes[0].summary["answered_annotations"] == [uid]
    # The loop guard: the node's answer, sent back, is no prompt; the report it answered is not answered again.
    inputs = [*(tmp_path / "in").iterdir(), drawn[0]]
    assert [str(ds.SOPInstanceUID) for ds in annotation_objects(inputs, settings.output.manufacturer)] == [uid]
    assert annotation_objects(inputs, settings.output.manufacturer, answered=[uid]) == []


def test_an_object_with_nothing_drawn_asks_for_no_answer(settings: Settings, tmp_path: Path) -> None:
    image, _ = ultrasound_image(rows=120, columns=160, seed=39)
    text_only = rectangle_report(image, [])
    job = plan_prompts([text_only], [Candidate(Path("x"), image)])
    assert not job.drawn and [s.reason for s in job.skipped] == ["the measurement report holds no measurement group"]
    degenerate = plan_prompts([rectangle_report(image, [(1.0, 1.0, 1.0, 1.0)])], [Candidate(Path("x"), image)])
    assert degenerate.drawn and not degenerate.regions


def test_process_notes_an_object_with_nothing_drawn_and_does_not_answer_it(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    """As ``serve`` does: the images get their automatic results, the report is noted and recorded as
    answered, and no prompted SEG or SR is written for it."""
    image, _ = ultrasound_image(rows=120, columns=160, seed=40)
    text_only = rectangle_report(image, [])
    write_datasets([image, text_only], tmp_path / "in")
    outcomes, unusable = process_paths(
        [tmp_path / "in"], tmp_path / "out", engine=engine, templates=templates, settings=settings
    )
    assert unusable == 0 and [o.state for o in outcomes] == ["done"]
    series = {pydicom.dcmread(p).SeriesNumber for p in outcomes[0].outputs}
    assert series and not series & {settings.prompts.series_number_seg, settings.prompts.series_number_sr}
    uid = str(text_only.SOPInstanceUID)
    assert outcomes[0].summary["answered_annotations"] == [uid]
    assert any(uid in note and "holds no measurement group" in note for note in outcomes[0].summary["notes"])


# -- presentation states through the node -------------------------------------------------------------------


def rectangle_presentation_state(image: Dataset, box: tuple[float, float, float, float], label: str) -> Dataset:
    """A GSPS as a viewer stores it: a PIXEL rectangle (closed POLYLINE) and its text on ``image``."""
    x0, y0, x1, y1 = box
    layer = hd.pr.GraphicLayer(layer_name="ANNOTATIONS", order=1)
    rectangle = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    annotation = hd.pr.GraphicAnnotation(
        [image],
        layer,
        graphic_objects=[hd.pr.GraphicObject("POLYLINE", rectangle, "PIXEL", tracking_id="box", tracking_uid=hd.UID())],
        text_objects=[hd.pr.TextObject(label, "PIXEL", bounding_box=(x0, max(y0 - 15, 0), x1, max(y0 - 1, 1)))],
    )
    return presentation_state(image, [annotation], layer)


def test_process_answers_a_presentation_state_given_with_the_images(
    engine: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    image, lesion = ultrasound_image(rows=240, columns=320, seed=40)
    state = rectangle_presentation_state(image, lesion_box(lesion), "Lesion G")
    write_datasets([image, state], tmp_path / "in")
    outcomes, unusable = process_paths(
        [tmp_path / "in"], tmp_path / "out", engine=engine, templates=templates, settings=settings
    )
    assert unusable == 0 and [o.state for o in outcomes] == ["done"]
    by_series = {int(pydicom.dcmread(p).SeriesNumber): Path(p) for p in outcomes[0].outputs}
    seg_path, sr_path = by_series[settings.prompts.series_number_seg], by_series[settings.prompts.series_number_sr]
    assert_dciodvfy_clean(seg_path)
    assert_dciodvfy_clean(sr_path)
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion G"]
    mask = np.asarray(seg.pixel_array, bool).reshape(-1, 240, 320).any(axis=0)
    assert dice(mask, lesion.mask(240, 320)) >= MIN_DICE
    evidence = evidence_uids(sr)
    assert {str(state.SOPInstanceUID), str(seg.SOPInstanceUID), str(image.SOPInstanceUID)} <= evidence
    assert outcomes[0].summary["answered_annotations"] == [str(state.SOPInstanceUID)]
