"""Train the demonstration classifier that ships in the package, and check it on a held-out phantom set.

    PYTHONPATH=. .venv/bin/python scripts/train_demo_classifier.py [--work-dir DIR] [--out FILE]

It writes a labelled phantom set (``samie_node.testing.lesion_phantoms``, seed 1: benign-looking round or
oval masses vs malignant-looking irregular or spiculated ones in ultrasound-like speckle), enhances it
with the node's own segmenter (LiteMedSAM, embedded weights; cached under the work folder), trains a
small ISA-DenseNet on the SAM-IE enhanced images (input mode ``enhanced``: what the node then feeds it),
measures it on a second set generated with another seed (seed 2, never seen in training), records that
held-out result in the checkpoint, and writes the checkpoint and its ``.sha256`` sidecar. Paste the
printed SHA-256 into ``samie_node/engine/demo_classifier.py``.

The model knows phantoms only: a demonstration, not for clinical use, as its name says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from samie_node.config import load_settings
from samie_node.engine.classify import Classifier, save_checkpoint
from samie_node.engine.dataset import discover_dataset, settings_digest
from samie_node.engine.demo_classifier import DEMO_CLASSIFIER, DEMO_CLASSIFIER_NAME
from samie_node.engine.device import select_device
from samie_node.engine.metrics import evaluate_samples
from samie_node.engine.models import engine_cache
from samie_node.engine.progress import RichProgress
from samie_node.engine.train import TrainConfig, load_all, train_classifier
from samie_node.engine.weights import load_segmenter
from samie_node.testing.lesion_phantoms import write_labelled_set

TRAIN_SEED, HELD_OUT_SEED = 1, 2
TRAIN_PER_CLASS, HELD_OUT_PER_CLASS = 250, 50
PHANTOM_SIZE = 192
CONFIG = TrainConfig(
    arch="isa_densenet",
    arch_options={"init_features": 24, "growth_rate": 16, "block_layers": [4, 8, 12]},
    epochs=40,
    batch_size=16,
    learning_rate=2e-3,
    image_size=96,
    input_mode="enhanced",
    validation_fraction=0.2,
    seed=0,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/samie-demo-classifier"))
    parser.add_argument("--out", type=Path, default=DEMO_CLASSIFIER)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    train_root, held_out_root = (
        args.work_dir / f"train-seed{TRAIN_SEED}",
        args.work_dir / f"held-out-seed{HELD_OUT_SEED}",
    )
    write_labelled_set(train_root, seed=TRAIN_SEED, per_class=TRAIN_PER_CLASS, size=PHANTOM_SIZE)
    write_labelled_set(held_out_root, seed=HELD_OUT_SEED, per_class=HELD_OUT_PER_CLASS, size=PHANTOM_SIZE)
    settings = load_settings(None, {"engine": {"device": "cpu"}})
    device = select_device(settings.engine)
    segmenter = load_segmenter(
        settings.segmenter, device, None, runtime=settings.engine.runtime, cache_dir=engine_cache(settings)
    )
    digest = settings_digest(settings.segmenter)
    with RichProgress(console) as progress:
        result = train_classifier(
            train_root, CONFIG, segmenter=segmenter, device=device, settings_digest=digest, progress=progress
        )
        held_out = discover_dataset(held_out_root)
        samples = load_all(held_out, CONFIG, segmenter, None, digest, progress)
    content = result.content
    content.name = DEMO_CLASSIFIER_NAME
    evaluation = evaluate_samples(Classifier(result.model, content, sha256="", device=device), samples)
    content.metrics["held_out"] = {
        "seed": HELD_OUT_SEED,
        "per_class": HELD_OUT_PER_CLASS,
        **evaluation.to_dict(),
    }
    content.training["phantoms"] = {"seed": TRAIN_SEED, "per_class": TRAIN_PER_CLASS, "size": PHANTOM_SIZE}
    sha256 = save_checkpoint(args.out, result.model, content)
    validation = result.evaluation
    if validation is not None:
        print(f"validation split of seed {TRAIN_SEED}: accuracy {validation.accuracy:.3f}, AUC {validation.auc}")
    print(
        f"held-out seed {HELD_OUT_SEED} ({evaluation.count} images): accuracy {evaluation.accuracy:.3f} "
        f"{evaluation.accuracy_ci}, AUC {evaluation.auc} {evaluation.auc_ci}, confusion {evaluation.confusion}"
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
