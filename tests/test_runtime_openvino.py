"""LiteMedSAM through OpenVINO: the same masks as the torch reference, a verified cache, and the fallback.

The masks are compared prompt for prompt (the automatic mode's largest proposals plus a centre box) on two
phantoms and pydicom's real CT, MR and ultrasound images: every mask must reach Dice 0.99 with the
float32 eager reference (measured here: 1.0, the logits differ by about 1e-5).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import CPU, dice, litemedsam_segmenter, read_testdata

from samie_node.config import SegmenterSettings
from samie_node.engine.automatic import profile_name, proposal_boxes
from samie_node.engine.decoder_graph import FoldedBoxDecoder
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.runtime_openvino import (
    BOXES_PER_CALL,
    GRAPH_FILES,
    MANIFEST,
    OpenVinoSam,
    accelerate,
    export_folder,
    verified,
)
from samie_node.engine.sam import BoxDecoder, ImageEmbedding, SamSegmenter
from samie_node.engine.weights import load_segmenter
from samie_node.testing.synthetic import disc_on_speckle

MASK_DICE = 0.99
#: Proposals compared per image (the largest regions first), to keep the reference decoder's time small.
PROPOSALS = 5
FALLBACK = "LiteMedSAM runs on the reference torch path"


def _proposals(segmenter: SamSegmenter, image: np.ndarray) -> np.ndarray:
    """The automatic mode's first boxes for ``image``, with the profile the image itself chooses."""
    profiles = segmenter.settings.profiles
    return proposal_boxes(image, profiles[profile_name(profiles, "", image)])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def reference() -> Iterator[SamSegmenter]:
    yield litemedsam_segmenter()


@pytest.fixture(scope="module")
def accelerated(cache: Path) -> Iterator[SamSegmenter]:
    yield accelerate(litemedsam_segmenter(), cache)


def _test_images() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    phantoms = [disc_on_speckle(256, rng=rng).image for _ in range(2)]
    real = ["CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm"]  # CT, MR, ultrasound
    return phantoms + [prepare_dataset(read_testdata(name), max_pixels=10**8)[0].image for name in real]


def test_openvino_masks_match_the_torch_reference(reference: SamSegmenter, accelerated: SamSegmenter) -> None:
    assert isinstance(accelerated.runtime, OpenVinoSam) and accelerated.runtime.hint == "f32"
    assert accelerated.decoder_batch_size == BOXES_PER_CALL
    assert reference.runtime is None
    compared = 0
    for image in _test_images():
        height, width = image.shape[:2]
        centre = np.array([[0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height]], np.float32)
        boxes = np.concatenate([_proposals(reference, image)[:PROPOSALS], centre])
        fast, exact = accelerated.segment([image], [boxes])[0], reference.segment([image], [boxes])[0]
        assert len(fast) == len(exact) == len(boxes)
        for ours, theirs in zip(fast.masks, exact.masks, strict=True):
            assert dice(ours, theirs) >= MASK_DICE
        np.testing.assert_allclose(fast.predicted_iou, exact.predicted_iou, atol=1e-3)
        np.testing.assert_allclose(fast.stability_score, exact.stability_score, atol=1e-2)
        compared += len(boxes)
    assert compared >= 20
    image = _test_images()[0]
    automatic, expected = accelerated.segment([image])[0], reference.segment([image])[0]
    assert len(automatic) == len(expected) >= 1
    assert min(dice(a, b) for a, b in zip(automatic.masks, expected.masks, strict=True)) >= MASK_DICE


def test_the_rearranged_decoder_computes_the_reference_decoder(reference: SamSegmenter) -> None:
    image = _test_images()[2]
    features = reference.embed([image])[0].features
    boxes = torch.tensor([[10.0, 20.0, 100.0, 120.0], [40.0, 30.0, 250.0, 200.0], [0.0, 0.0, 256.0, 256.0]])
    with torch.inference_mode():
        expected = BoxDecoder(reference.model)(features, boxes)
        folded = FoldedBoxDecoder(reference.model)(features, boxes)
        single = FoldedBoxDecoder(reference.model)(features, boxes[1:2])
    assert folded[0].shape == expected[0].shape == (3, 1, 256, 256) and folded[1].shape == expected[1].shape == (3, 1)
    torch.testing.assert_close(folded[0], expected[0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(folded[1], expected[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single[0], expected[0][1:2], atol=1e-3, rtol=1e-4)  # boxes do not mix


def test_mask_upsampling_is_segment_anythings(reference: SamSegmenter) -> None:
    # The segmenter skips bilinear resizes to the size a tensor already has; the logits must stay exactly
    # those of Sam.postprocess_masks, for a 256 px image (no resize at all) and for larger and smaller ones.
    low_res = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    for original, resized in (((256, 256), (256, 256)), ((300, 517), (149, 256)), ((128, 96), (256, 192))):
        embedding = ImageEmbedding(torch.zeros(1, 256, 64, 64), original_size=original, input_size=resized)
        with torch.inference_mode():
            expected = reference.model.postprocess_masks(low_res, resized, original)
            assert torch.equal(reference._upsample(low_res, embedding), expected)


def test_export_is_cached_and_verified(cache: Path, accelerated: SamSegmenter) -> None:
    assert accelerated.runtime is not None
    (folder,) = [path for path in cache.iterdir() if path.is_dir()]
    assert verified(folder)
    assert set(json.loads((folder / MANIFEST).read_text())) == set(GRAPH_FILES)
    written = {name: (folder / name).stat().st_mtime_ns for name in (*GRAPH_FILES, MANIFEST)}
    again = accelerate(litemedsam_segmenter(), cache)  # a second start reuses the verified export
    assert isinstance(again.runtime, OpenVinoSam)
    assert {name: (folder / name).stat().st_mtime_ns for name in written} == written
    damaged = bytearray((folder / "decoder.bin").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "decoder.bin").write_bytes(bytes(damaged))
    assert not verified(folder)  # the next start exports again instead of loading it


def test_missing_openvino_falls_back_to_torch(
    reference: SamSegmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets when it is not installed
    with caplog.at_level(logging.WARNING, logger="samie_node.engine.runtime_openvino"):
        segmenter = accelerate(reference, tmp_path)
    assert segmenter.runtime is None
    assert FALLBACK in caplog.text and "ModuleNotFoundError" in caplog.text
    assert not any(tmp_path.iterdir())


def test_an_export_that_fails_to_load_falls_back_to_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = litemedsam_segmenter()
    folder = export_folder(tmp_path, reference.weights_sha256, importlib.metadata.version("openvino"))
    folder.mkdir(parents=True)
    for name in GRAPH_FILES:  # verified against its manifest, but not a graph OpenVINO can read
        (folder / name).write_bytes(b"<net>not a model</net>")
    digest = hashlib.sha256(b"<net>not a model</net>").hexdigest()
    (folder / MANIFEST).write_text(json.dumps(dict.fromkeys(GRAPH_FILES, digest)))
    assert verified(folder)
    with caplog.at_level(logging.WARNING, logger="samie_node.engine.runtime_openvino"):
        segmenter = load_segmenter(SegmenterSettings(mode="box"), CPU, runtime="openvino", cache_dir=tmp_path)
    assert segmenter.runtime is None and FALLBACK in caplog.text
    image = _test_images()[0]
    masks = segmenter.segment([image], [np.array([[64, 64, 192, 192]], np.float32)])[0]
    assert len(masks) == 1 and masks.masks[0].any()
