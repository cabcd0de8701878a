"""Training and evaluation on generated two-class datasets, the enhancement cache, and the CLI commands.

The main training test uses :class:`ThresholdSegmenter` (milliseconds per image) so that it can afford
160 images; the command-line test runs the real LiteMedSAM on a tiny dataset. Measured on the 2-core CPU:
ISA-DenseNet (16 stem channels, growth 12, blocks 3-6-6) at 64 px, 15 epochs on 128 training images,
reaches validation accuracy 0.91-0.97 (AUC 0.95-1.0) over seeds 0-2 in 7-12 s.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import CPU, ThresholdSegmenter
from typer.testing import CliRunner

from samie_node.cli import app
from samie_node.engine.classify import load_classifier, save_checkpoint
from samie_node.engine.compare import compare
from samie_node.engine.dataset import EnhancementCache, discover_dataset, split_files
from samie_node.engine.evaluate import evaluate_checkpoint
from samie_node.engine.train import TrainConfig, TrainResult, train_classifier
from samie_node.errors import InvalidInputError
from samie_node.testing.synthetic import LESION_CODES, write_lesion_dataset

SMALL_NET = {"init_features": 16, "growth_rate": 12, "block_layers": [3, 6, 6]}
CONFIG = TrainConfig(
    arch="isa_densenet", arch_options=SMALL_NET, epochs=15, image_size=64, batch_size=16, learning_rate=3e-3
)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lesions")
    write_lesion_dataset(root, n_per_class=80, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(lesions: Path) -> TrainResult:
    return train_classifier(lesions, CONFIG, segmenter=ThresholdSegmenter(), device=CPU)


def test_training_beats_chance_clearly(trained: TrainResult) -> None:
    evaluation = trained.evaluation
    assert evaluation is not None
    assert evaluation.count == 32
    assert evaluation.accuracy >= 0.8
    assert evaluation.auc is not None and evaluation.auc >= 0.85
    assert np.asarray(evaluation.confusion).sum() == 32
    assert len(trained.history) == CONFIG.epochs
    assert all(record["auc"] is not None for record in trained.history)
    assert [label.name for label in trained.content.labels] == ["irregular_spiculated", "smooth_round"]
    assert trained.content.labels[1].code_value == LESION_CODES["smooth_round"]["code_value"]


def test_checkpoint_reloads_and_predicts_the_same(trained: TrainResult, lesions: Path, tmp_path: Path) -> None:
    path = tmp_path / "lesions.pt"
    digest = save_checkpoint(path, trained.model, trained.content)
    classifier = load_classifier(path, CPU)
    assert classifier.sha256 == digest
    assert classifier.input_mode == "both"
    assert classifier.content.segmenter["name"] == ThresholdSegmenter.name
    assert classifier.content.metrics["best_epoch"] >= 1

    from samie_node.engine.classify import Classifier

    in_memory = Classifier(trained.model, trained.content, sha256="", device=CPU)
    rng = np.random.default_rng(4)
    originals = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    enhanced = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    reloaded = classifier.predict(originals, enhanced)
    np.testing.assert_allclose(reloaded, in_memory.predict(originals, enhanced), atol=1e-6)

    report = evaluate_checkpoint(path, lesions, segmenter=ThresholdSegmenter(), device=CPU)
    assert report.split == "validation"
    assert report.evaluation.count == 32
    assert report.evaluation.accuracy == pytest.approx(trained.evaluation.accuracy if trained.evaluation else -1)
    assert report.sha256 == digest


def test_compare_trains_both_arms_on_one_split(lesions: Path) -> None:
    config = replace(CONFIG, epochs=2, validation_fraction=0.2)
    result = compare(lesions, [config], segmenter=ThresholdSegmenter(), device=CPU)
    assert [(arm.arch, arm.input_mode) for arm in result.arms] == [
        ("isa_densenet", "original"),
        ("isa_densenet", "enhanced"),
    ]
    assert len(result.validation_files) == 32 and result.seed == config.seed
    for arm in result.arms:  # both arms evaluated on the same 32 images, with intervals around their figures
        evaluation = arm.evaluation
        assert evaluation.count == 32 and np.asarray(evaluation.confusion).sum() == 32
        assert evaluation.accuracy_ci is not None and evaluation.auc is not None and evaluation.auc_ci is not None
        assert evaluation.accuracy_ci[0] <= evaluation.accuracy <= evaluation.accuracy_ci[1]
        assert evaluation.auc_ci[0] <= evaluation.auc <= evaluation.auc_ci[1]
    assert json.loads(json.dumps(result.to_dict()))["arms"][1]["input_mode"] == "enhanced"
    again = compare(lesions, [config], segmenter=ThresholdSegmenter(), device=CPU)
    assert again.validation_files == result.validation_files  # the same split for the same seed


def test_a_checkpoint_of_one_arm_is_refused_on_the_other(trained: TrainResult, lesions: Path, tmp_path: Path) -> None:
    path = tmp_path / "both.pt"
    save_checkpoint(path, trained.model, trained.content)
    assert trained.content.input_mode == "both"
    with pytest.raises(InvalidInputError, match="trained on both images and cannot be evaluated on enhanced"):
        evaluate_checkpoint(path, lesions, segmenter=ThresholdSegmenter(), device=CPU, input_mode="enhanced")
    report = evaluate_checkpoint(path, lesions, segmenter=ThresholdSegmenter(), device=CPU, input_mode="both")
    assert report.evaluation.count == 32


def test_enhancements_are_cached_by_file_and_segmenter(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_lesion_dataset(root, n_per_class=4, size=48, seed=2)
    config = TrainConfig(arch="isa_densenet", arch_options=SMALL_NET, epochs=1, image_size=48, validation_fraction=0.0)
    first = ThresholdSegmenter()
    train_classifier(root, config, segmenter=first, device=CPU)
    assert first.calls == 8
    assert len(list((root / ".samie-cache").glob("*.npz"))) == 8
    second = ThresholdSegmenter()
    train_classifier(root, config, segmenter=second, device=CPU)
    assert second.calls == 0
    changed = ThresholdSegmenter()
    changed.version = "2"
    train_classifier(root, config, segmenter=changed, device=CPU, cache_dir=tmp_path / "elsewhere")
    assert changed.calls == 8
    cache = EnhancementCache(tmp_path / "elsewhere", changed, "sam_ie")
    cached = cache.load(next((root / "smooth_round").glob("*.png")))
    assert cached is not None and cached[0].shape == (48, 48, 3) and cached[0].dtype == np.uint8


def test_dicom_dataset_with_samaug(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    write_lesion_dataset(root, n_per_class=5, size=48, image_format="dicom", seed=1)
    config = TrainConfig(
        arch="isa_densenet",
        arch_options=SMALL_NET,
        epochs=2,
        image_size=48,
        enhancement="samaug",
        input_mode="enhanced",
    )
    result = train_classifier(root, config, segmenter=ThresholdSegmenter(), device=CPU)
    assert result.content.enhancement == "samaug" and result.content.input_mode == "enhanced"
    assert result.evaluation is not None and result.evaluation.count == 2


def test_dataset_discovery_and_split(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        discover_dataset(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    with pytest.raises(InvalidInputError, match="two class"):
        discover_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no DICOM"):
        discover_dataset(tmp_path)

    root = tmp_path / "ok"
    write_lesion_dataset(root, n_per_class=10, size=32, seed=0)
    dataset = discover_dataset(root)
    assert len(dataset.files) == 20
    train, validation = split_files(dataset.files, 0.2, seed=0)
    assert len(validation) == 4 and sorted(f.label for f in validation) == [0, 0, 1, 1]
    assert not {f.relative for f in train} & {f.relative for f in validation}
    (root / "labels.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match=r"labels\.json"):
        discover_dataset(root)
    (root / "labels.json").unlink()
    assert discover_dataset(root).labels[0].coding_scheme_designator == "99SAMIE"


def test_cli_train_and_evaluate_with_litemedsam(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    write_lesion_dataset(root, n_per_class=4, size=48, seed=5)
    checkpoint = tmp_path / "tiny.pt"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(root),
            "--out",
            str(checkpoint),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--validation-fraction",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert checkpoint.is_file() and (tmp_path / "tiny.pt.sha256").is_file()
    classifier = load_classifier(checkpoint, torch.device("cpu"))
    assert classifier.content.segmenter["name"] == "LiteMedSAM"

    result = runner.invoke(app, ["evaluate", str(root), "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["split"] == "validation" and report["evaluation"]["count"] == 4
    assert report["sha256"] == classifier.sha256

    # the comparison from the command line, on the cached enhancements of the same tiny set
    args = ["compare", str(root), "--epochs", "1", "--image-size", "32", "--batch-size", "4"]
    result = runner.invoke(app, [*args, "--validation-fraction", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout[result.stdout.index("{") :])
    assert [arm["input_mode"] for arm in comparison["arms"]] == ["original", "enhanced"]
    assert all(arm["evaluation"]["count"] == 4 for arm in comparison["arms"])
    result = runner.invoke(app, ["evaluate", str(root), "--checkpoint", str(checkpoint), "--input-mode", "original"])
    assert result.exit_code == 2 and "cannot be evaluated on original" in " ".join(result.output.split())
