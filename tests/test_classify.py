"""Classifier architectures, the checkpoint format and its hash checks, and prediction in each input mode."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from engine_fixtures import CPU

from samie_node.engine import models as models_module
from samie_node.engine.classify import (
    CheckpointContent,
    ClassLabel,
    ISADenseNet,
    Preprocessing,
    build_model,
    file_sha256,
    load_classifier,
    save_checkpoint,
    sidecar_path,
)
from samie_node.engine.dataset import discover_dataset
from samie_node.engine.demo_classifier import DEMO_CLASSIFIER, DEMO_CLASSIFIER_NAME, DEMO_CLASSIFIER_SHA256
from samie_node.engine.models import load_configured_classifier
from samie_node.errors import ModelError
from samie_node.testing.lesion_phantoms import BENIGN, MALIGNANT, labelled_phantom, write_labelled_set

LABELS = [
    ClassLabel("benign", "BEN", "99TEST", "Benign finding"),
    ClassLabel("malignant", "MAL", "99TEST", "Malignant finding"),
]
SMALL = {"init_features": 8, "growth_rate": 8, "block_layers": [2, 2, 2]}


def _images(count: int, seed: int, size: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for _ in range(count)]


def _content(input_mode: str = "both", **extra: object) -> CheckpointContent:
    return CheckpointContent(
        arch="isa_densenet",
        labels=LABELS,
        input_mode=input_mode,
        preprocessing=Preprocessing(32, (0.4, 0.3, 0.5), (0.2, 0.25, 0.3)),
        arch_options=dict(SMALL),
        segmenter={"name": "LiteMedSAM", "version": "x", "weights_sha256": "ab" * 32},
        training={"epochs": 1},
        metrics={"history": [{"epoch": 1, "loss": 0.5, "auc": None}]},
        version="test",
        **extra,  # type: ignore[arg-type]
    )


def _saved(tmp_path: Path, input_mode: str = "both") -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("isa_densenet", 2, SMALL).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, _content(input_mode))
    return path, model


@pytest.mark.parametrize("arch", ["resnet50", "swin_t", "isa_densenet"])
def test_architectures_build_and_run_at_small_sizes(arch: str) -> None:
    model = build_model(arch, 3).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3)


def test_isa_densenet_channel_arithmetic() -> None:
    seed_sized = ISADenseNet(2)  # the seed's 64 + 6x32 -> 128, 128 + 12x32 -> 256, 256 + 24x32 = 1024
    assert seed_sized.classifier.in_features == 1024
    small = ISADenseNet(2, init_features=16, growth_rate=12, block_layers=(3, 6, 6))
    assert small.classifier.in_features == 121  # 16 + 3x12 = 52 -> 26, 26 + 6x12 = 98 -> 49, 49 + 6x12
    with torch.inference_mode():
        assert small.eval()(torch.rand(1, 3, 48, 48)).shape == (1, 2)
    with pytest.raises(ModelError):
        build_model("isa_densenet", 2, {"depth": 3})
    with pytest.raises(ModelError):
        build_model("vgg16", 2)
    with pytest.raises(ModelError):
        build_model("resnet50", 1)


def test_checkpoint_round_trip_predicts_the_same(tmp_path: Path) -> None:
    path, model = _saved(tmp_path)
    classifier = load_classifier(path, CPU)
    assert classifier.labels == LABELS
    assert classifier.arch == "isa_densenet" and classifier.input_mode == "both"
    assert classifier.sha256 == file_sha256(path)
    assert sidecar_path(path).read_text().split() == [classifier.sha256, "model.pt"]
    assert classifier.version == "test"
    assert classifier.content.segmenter["name"] == "LiteMedSAM"

    originals, enhanced = _images(5, 1), _images(5, 2)
    probabilities = classifier.predict(originals, enhanced)
    assert probabilities.shape == (5, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    preprocessing = classifier.content.preprocessing
    with torch.inference_mode():
        direct = [torch.softmax(model(preprocessing.tensor(images)), 1).numpy() for images in (originals, enhanced)]
    np.testing.assert_allclose(probabilities, (direct[0] + direct[1]) / 2, atol=1e-5)


@pytest.mark.parametrize("mode", ["original", "enhanced"])
def test_single_input_modes_use_only_their_images(tmp_path: Path, mode: str) -> None:
    path, model = _saved(tmp_path, mode)
    classifier = load_classifier(path, CPU)
    images = _images(3, 5)
    preprocessing = classifier.content.preprocessing
    with torch.inference_mode():
        expected = torch.softmax(model(preprocessing.tensor(images)), 1).numpy()
    result = classifier.predict(images, []) if mode == "original" else classifier.predict([], images)
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert classifier.predict([], []).shape == (0, 2)


def test_preprocessing_resizes_and_normalises() -> None:
    preprocessing = Preprocessing(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = np.full((40, 20, 3), 255, np.uint8)
    tensor = preprocessing.tensor([image])
    assert tensor.shape == (1, 3, 16, 16)
    torch.testing.assert_close(tensor, torch.full((1, 3, 16, 16), 2.0))
    with pytest.raises(ValueError):
        preprocessing.tensor([np.zeros((4, 4), np.uint8)])


def test_hash_is_verified_against_sidecar_and_expected_value(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    digest = file_sha256(path)
    assert load_classifier(path, CPU, expected_sha256=digest).sha256 == digest
    with pytest.raises(ModelError, match="SHA-256"):
        load_classifier(path, CPU, expected_sha256="0" * 64)
    sidecar_path(path).write_text("f" * 64 + "  model.pt\n")
    with pytest.raises(ModelError, match="SHA-256"):
        load_classifier(path, CPU)
    sidecar_path(path).unlink()
    assert load_classifier(path, CPU).sha256 == digest  # no sidecar: reported, not checked


def test_broken_checkpoints_give_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_classifier(tmp_path / "missing.pt", CPU)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="not a readable"):
        load_classifier(garbage, CPU)

    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ModelError, match="not a samie-node"):
        load_classifier(other, CPU)

    incomplete = tmp_path / "incomplete.pt"
    data = _content().to_dict(build_model("isa_densenet", 2, SMALL).state_dict())
    del data["labels"]
    torch.save(data, incomplete)
    with pytest.raises(ModelError, match="incomplete"):
        load_classifier(incomplete, CPU)

    mismatched = tmp_path / "mismatched.pt"
    data = _content().to_dict(build_model("isa_densenet", 3, SMALL).state_dict())  # 3 outputs, 2 labels
    torch.save(data, mismatched)
    with pytest.raises(ModelError, match="do not match"):
        load_classifier(mismatched, CPU)

    pickled = tmp_path / "pickled.pt"
    data = _content().to_dict(build_model("isa_densenet", 2, SMALL).state_dict())
    data["extra"] = Path("/")  # an arbitrary object: refused by weights_only loading
    torch.save(data, pickled)
    with pytest.raises(ModelError, match="not a readable"):
        load_classifier(pickled, CPU)


def test_class_labels_need_every_field() -> None:
    with pytest.raises(ValueError):
        ClassLabel("benign", "", "99TEST", "Benign")
    assert ClassLabel.from_dict(
        {"name": "a", "code_value": "1", "coding_scheme_designator": "SCT", "code_meaning": "A"}
    ) == ClassLabel("a", "1", "SCT", "A")


def test_the_packaged_demonstration_model_is_what_it_says(tmp_path: Path) -> None:
    """The demo model ships with its hash, is named as a demonstration, reads enhanced images, and held its
    accuracy on phantoms it never saw (a seed other than its training set's)."""
    assert file_sha256(DEMO_CLASSIFIER) == DEMO_CLASSIFIER_SHA256
    assert sidecar_path(DEMO_CLASSIFIER).read_text().split() == [DEMO_CLASSIFIER_SHA256, DEMO_CLASSIFIER.name]
    assert DEMO_CLASSIFIER.stat().st_size < 4_000_000  # small enough to ship in the package
    classifier = load_classifier(DEMO_CLASSIFIER, CPU, expected_sha256=DEMO_CLASSIFIER_SHA256)
    assert classifier.name == DEMO_CLASSIFIER_NAME and len(classifier.name) <= 64
    assert "synthetic" in classifier.name and "not for clinical use" in classifier.name
    assert classifier.input_mode == "enhanced"
    assert [label.code_meaning for label in classifier.labels] == [
        "benign-appearing (demo)",
        "malignant-appearing (demo)",
    ]
    held_out = classifier.content.metrics["held_out"]
    assert held_out["seed"] != classifier.content.training["phantoms"]["seed"]
    assert held_out["accuracy"] >= 0.85, held_out


def test_an_altered_demonstration_model_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy with one byte changed fails its sidecar; the node checks the packaged file against the hash
    it shipped with, so a changed file (here: a changed expectation) stops the node loading it."""
    altered = tmp_path / DEMO_CLASSIFIER.name
    data = bytearray(DEMO_CLASSIFIER.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    sidecar_path(altered).write_bytes(sidecar_path(DEMO_CLASSIFIER).read_bytes())
    with pytest.raises(ModelError, match="SHA-256"):
        load_classifier(altered, CPU)
    assert load_configured_classifier(DEMO_CLASSIFIER, CPU) is not None
    monkeypatch.setattr(models_module, "DEMO_CLASSIFIER_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        load_configured_classifier(DEMO_CLASSIFIER, CPU)


def test_labelled_phantoms_are_seeded_balanced_and_coded(tmp_path: Path) -> None:
    first = write_labelled_set(tmp_path / "a", seed=3, per_class=3, size=96)
    again = write_labelled_set(tmp_path / "b", seed=3, per_class=3, size=96)
    other = write_labelled_set(tmp_path / "c", seed=4, per_class=3, size=96)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]
    dataset = discover_dataset(tmp_path / "a")
    assert [label.code_value for label in dataset.labels] == ["DEMO-BENIGN", "DEMO-MALIGNANT"]
    assert sorted(f.label for f in dataset.files) == [0, 0, 0, 1, 1, 1]
    # The classes differ where they should: malignant outlines are rougher (perimeter^2 / area).
    rng = np.random.default_rng(0)

    def roughness(label: str) -> float:
        mask = labelled_phantom(rng, label, 192).mask.astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        return float(cv2.arcLength(contours[0], True) ** 2 / cv2.contourArea(contours[0]))

    benign = [roughness(BENIGN) for _ in range(10)]
    malignant = [roughness(MALIGNANT) for _ in range(10)]
    assert np.median(malignant) > 1.3 * np.median(benign)
