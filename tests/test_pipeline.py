"""The whole engine on real studies: SEG and SR valid (dciodvfy), read back by highdicom frame by frame,
deterministic UIDs, and per-instance failures that do not stop the study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_checks import assert_dciodvfy_clean
from pydicom.data import get_testdata_file

from samie_node.config import Settings, load_settings
from samie_node.encode.part10 import encode_file
from samie_node.encode.templates import Templates, load_templates
from samie_node.engine.backend import LocalEngine
from samie_node.engine.models import load_models
from samie_node.errors import NoImagesError
from samie_node.pipeline import StudyResult, process_study
from samie_node.testing.sample_studies import (
    ct_series,
    rgb_photograph,
    ultrasound_cine,
    ultrasound_image,
    write_datasets,
)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None, {"engine": {"device": "cpu"}})


@pytest.fixture(scope="module")
def models(settings: Settings) -> LocalEngine:
    return LocalEngine(load_models(settings), settings)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return load_templates()


def bundled(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def write_outputs(result: StudyResult, folder: Path) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for output in result.outputs:
        path = folder / f"{output.kind}-{output.sop_instance_uid}.dcm"
        path.write_bytes(encode_file(output.dataset))
        written.setdefault(output.kind, []).append(path)
    return written


def check_outputs(result: StudyResult, folder: Path, sources: list[Path]) -> dict[str, list[Path]]:
    """dciodvfy-clean, and the SEG read back equals the computed mask on the right source frames."""
    written = write_outputs(result, folder)
    for paths in written.values():
        for path in paths:
            assert_dciodvfy_clean(path)
    source_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    for path in written.get("SEG", []):
        seg = hd.seg.segread(path)
        assert str(seg.StudyInstanceUID) == result.study_instance_uid
        referenced = {
            str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
        }
        assert referenced <= source_uids
        for sop_uid in referenced:
            frames = int(
                pydicom.dcmread(
                    next(p for p in sources if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop_uid),
                    stop_before_pixels=True,
                ).get("NumberOfFrames", 1)
                or 1
            )
            numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
            for frame in range(1, frames + 1):
                if frames > 1:
                    read = seg.get_pixels_by_source_frame(sop_uid, [frame], segment_numbers=numbers)[0]
                else:
                    read = seg.get_pixels_by_source_instance([sop_uid], segment_numbers=numbers)[0]
                # segment by segment, each region's mask; together, the union SAM-IE enhanced with
                assert np.array_equal(read.astype(bool).any(axis=-1), result.mask(sop_uid, frame)), (sop_uid, frame)
                if not result.regions[str(seg.SOPInstanceUID)]:
                    continue  # an empty result: one empty "No region" segment
                for plane, number in enumerate(numbers):
                    expected = result.segment_mask(str(seg.SOPInstanceUID), number, sop_uid, frame)
                    assert np.array_equal(read[..., plane].astype(bool), expected), (sop_uid, frame, number)
    [sr_path] = written["SR"]
    sr = hd.sr.srread(sr_path)
    assert str(sr.StudyInstanceUID) == result.study_instance_uid
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    seg_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written.get("SEG", [])}
    assert seg_uids <= evidence and source_uids & evidence
    return written


@pytest.fixture()
def ct_study(tmp_path: Path) -> Iterator[tuple[list[Path], object]]:
    datasets, lesion = ct_series(slices=4, rows=128, columns=128, seed=11)
    yield write_datasets(datasets, tmp_path / "ct"), lesion


def test_ct_series_seg_and_sr(
    ct_study: tuple[list[Path], object], models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    paths, lesion = ct_study
    result = process_study(paths, models, templates, settings)
    written = check_outputs(result, tmp_path / "out", paths)
    assert len(written["SEG"]) == 1 and len(written["SR"]) == 1
    seg = hd.seg.segread(written["SEG"][0])
    assert int(seg.NumberOfFrames) == 4 * len(seg.SegmentSequence)  # empty frames kept, for every segment
    assert seg.SegmentSequence[0].SegmentLabel == "Region 1"
    assert "RecommendedDisplayCIELabValue" in seg.SegmentSequence[0]
    assert result.summary.classification is None
    # The bright sphere is found on the middle slices.
    middle = pydicom.dcmread(paths[2], stop_before_pixels=True)
    mask = result.mask(str(middle.SOPInstanceUID))
    disc = lesion.mask(128, 128)  # type: ignore[attr-defined]
    assert (mask & disc).sum() / disc.sum() > 0.5
    # Re-processing yields the same output UIDs.
    again = process_study(paths, models, templates, settings)
    assert [o.sop_instance_uid for o in again.outputs] == [o.sop_instance_uid for o in result.outputs]


def test_sr_states_plainly_that_no_classifier_was_used(
    ct_study: tuple[list[Path], object], models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    paths, _ = ct_study
    result = process_study(paths, models, templates, settings)
    sr = next(o.dataset for o in result.outputs if o.kind == "SR")
    texts: list[str] = []
    sr.walk(lambda _ds, element: texts.append(str(element.value)) if element.VR in ("UT", "LO", "SH") else None)
    assert any("No classifier configured" in t for t in texts)
    assert any(
        models.models_info().algorithm.weights_sha256 in t for t in texts
    )  # the algorithm's weights hash is recorded


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",  # MR with frame of reference
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline RGB secondary capture
        "JPEG2000.dcm",  # JPEG 2000
        "examples_rgb_color.dcm",  # single-frame RGB ultrasound without frame of reference
        "examples_palette.dcm",  # palette colour ultrasound
    ],
)
def test_bundled_files(
    name: str, models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    path = bundled(name)
    result = process_study([path], models, templates, settings)
    written = check_outputs(result, tmp_path / "out", [path])
    assert len(written["SEG"]) == 1


def test_generated_ultrasound_and_photograph(
    models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    for factory in (ultrasound_image, rgb_photograph):
        dataset, lesion = factory()
        [path] = write_datasets([dataset], tmp_path / factory.__name__)
        result = process_study([path], models, templates, settings)
        check_outputs(result, tmp_path / f"out-{factory.__name__}", [path])
        mask = result.mask(str(dataset.SOPInstanceUID))
        disc = lesion.mask(int(dataset.Rows), int(dataset.Columns))
        dice = 2 * (mask & disc).sum() / (mask.sum() + disc.sum())
        assert dice > 0.8, (factory.__name__, dice)


def test_multiframe_without_frame_of_reference_gets_overlays(
    models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    dataset, _ = ultrasound_cine(frames=3)  # a cine loop without a frame of reference, as scanners send
    [path] = write_datasets([dataset], tmp_path / "cine")
    result = process_study([path], models, templates, settings)
    kinds = [o.kind for o in result.outputs]
    assert "SEG" not in kinds and "SR" in kinds
    assert result.summary.notes and "secondary capture" in result.summary.notes[0]
    written = write_outputs(result, tmp_path / "out")
    for sc in written.get("SC", []):
        assert_dciodvfy_clean(sc)
        assert pydicom.dcmread(sc).BurnedInAnnotation == "YES"
    assert_dciodvfy_clean(written["SR"][0])
    assert len(written.get("SC", [])) == min(settings.output.max_overlays, result.summary.frames_with_region)


def test_bad_instances_are_skipped_and_the_study_goes_on(
    ct_study: tuple[list[Path], object], models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    paths, _ = ct_study
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(paths[0].read_bytes()[:2000])
    lossy = bundled("JPEG-lossy.dcm")  # does not decode with the installed plugins
    sr = bundled("test-SR.dcm")
    result = process_study([*paths[1:], truncated, lossy, sr], models, templates, settings)
    assert result.summary.images == 3
    skipped = result.summary.skipped
    assert sum(skipped.values()) == 3, skipped
    assert any("not an image" in reason for reason in skipped)


def test_study_without_images_fails_clearly(models: LocalEngine, templates: Templates, settings: Settings) -> None:
    with pytest.raises(NoImagesError, match="no processable image"):
        process_study([bundled("test-SR.dcm"), bundled("rtplan.dcm")], models, templates, settings)


def test_source_with_a_malformed_uid_is_skipped_not_an_internal_error(
    ct_study: tuple[list[Path], object], models: LocalEngine, templates: Templates, settings: Settings, tmp_path: Path
) -> None:
    # Found by the receive fuzz test: a dataset whose own SOP Class UID is garbage (the C-STORE request's
    # class was valid, so it was stored) made highdicom fail with a KeyError while copying attributes.
    paths, _ = ct_study
    bad = pydicom.dcmread(paths[0])
    bad.SOPClassUID = "1.2.840.\xf40008.5.1.4.1.1.2"
    broken = tmp_path / "bad-class.dcm"
    bad.save_as(broken)
    result = process_study([*paths[1:], broken], models, templates, settings)
    assert result.summary.images == len(paths) - 1
    assert result.summary.skipped == {"invalid SOPClassUID": 1}
    with pytest.raises(NoImagesError, match="invalid SOPClassUID"):
        process_study([broken], models, templates, settings)


def test_sr_can_be_turned_off_and_overlays_are_numbered_in_their_series(
    ct_study: tuple[list[Path], object], models: LocalEngine, templates: Templates
) -> None:
    paths, _ = ct_study
    settings = load_settings(None, {"engine": {"device": "cpu"}, "output": {"sr": False}})
    result = process_study(paths, models, templates, settings, overlays_for_destinations=True)
    kinds = [o.kind for o in result.outputs]
    assert "SR" not in kinds and "SEG" in kinds
    assert result.summary.outputs.get("SR") is None
    numbers = [int(o.dataset.InstanceNumber) for o in result.outputs if o.kind == "SC"]
    assert len(numbers) >= 2, "the sphere shows on several slices"
    assert numbers == list(range(1, len(numbers) + 1))


def test_the_class_is_written_where_the_viewer_shows_it(templates: Templates, tmp_path: Path) -> None:
    """With a classifier, each region's group opens with the class probability of its key image (the first
    line OHIF draws beside the outline), the SEG's series description names the study's class, and the
    classification group says how the per-image probabilities were combined."""
    from test_classify import _saved

    checkpoint, _ = _saved(tmp_path)
    settings = load_settings(None, {"engine": {"device": "cpu"}, "classifier": {"checkpoint": str(checkpoint)}})
    models = LocalEngine(load_models(settings), settings)
    dataset, _ = ultrasound_image()
    [path] = write_datasets([dataset], tmp_path / "us")
    result = process_study([path], models, templates, settings)
    written = check_outputs(result, tmp_path / "out", [path])
    classification = result.summary.classification
    assert classification is not None and classification.label in ("benign", "malignant")
    meaning = {"benign": "Benign finding", "malignant": "Malignant finding"}[classification.label]
    seg = pydicom.dcmread(written["SEG"][0])
    assert seg.SeriesDescription == f"SAM-IE segmentation - {meaning} {classification.probability:.0%}"
    sr = hd.sr.srread(written["SR"][0])
    groups = sr.ContentSequence[-1].ContentSequence  # Imaging Measurements
    first = next(g for g in groups if any(i.ValueType == "NUM" for i in g.ContentSequence))
    number = next(i for i in first.ContentSequence if i.ValueType == "NUM")
    assert number.ConceptNameCodeSequence[0].CodeMeaning.startswith("Probability of ")
    assert number.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert 50.0 <= float(number.MeasuredValueSequence[0].NumericValue) <= 100.0
    methods = [
        item.ConceptCodeSequence[0].CodeMeaning
        for group in groups
        for num in group.ContentSequence
        if num.ValueType == "NUM"
        for item in num.get("ContentSequence", [])
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"
    ]
    assert methods == ["Mean of the per-image probabilities"] * 2
