"""The SAM-IE comparison on phantoms: ``samie-node compare`` for ResNet50, Swin-T and ISA-DenseNet.

It writes a labelled phantom set (``samie_node.testing.lesion_phantoms``: benign-looking round or oval
masses vs malignant-looking irregular or spiculated ones, in ultrasound-like speckle), then runs
``samie-node compare`` on it: each architecture is trained once on the original images and once on the
SAM-IE enhanced images, with the same file split and seed, and both arms are evaluated on the same
validation files (accuracy and ROC AUC with 95% bootstrap intervals, confusion matrices). The table is
the command's own (also written to ``compare.txt`` in the work folder).

The defaults fit a 2-core CPU in about a quarter of an hour: small images, few epochs, every network trained
from scratch (nothing pretrained can be downloaded). They measure whether the command works and what
the enhancement does on *these* phantoms, not what it does on patients' images.

Run::

    .venv/bin/python bench/compare.py [--per-class 150] [--size 192] [--image-size 64] [--epochs 6]
        [--arch resnet50 --arch swin_t --arch isa_densenet] [--work-dir bench/scratch-compare]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.testing.lesion_phantoms import write_labelled_set  # noqa: E402

ARCHS = ("resnet50", "swin_t", "isa_densenet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=150, help="phantoms of each class (default 150)")
    parser.add_argument("--size", type=int, default=192, help="phantom side in pixels (default 192)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the phantoms, the split and training")
    parser.add_argument("--image-size", type=int, default=64, help="network input side (default 64)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of every arm (default 6)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--validation-fraction", type=float, default=0.3)
    parser.add_argument("--arch", action="append", choices=ARCHS, help="repeatable; default all three")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "scratch-compare")
    args = parser.parse_args(argv)
    dataset = args.work_dir / f"phantoms-seed{args.seed}-{args.per_class}x{args.size}"
    if not (dataset / "labels.json").is_file():
        write_labelled_set(dataset, seed=args.seed, per_class=args.per_class, size=args.size)
    command = [
        sys.executable,
        "-m",
        "samie_node",
        "compare",
        str(dataset),
        *[part for arch in args.arch or ARCHS for part in ("--arch", arch)],
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--validation-fraction",
        str(args.validation_fraction),
        "--seed",
        str(args.seed),
        "--cache-dir",
        str(args.work_dir / "cache"),
    ]
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    run = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env={**os.environ, "COLUMNS": "160"})
    print(run.stdout, end="")
    print(f"took {time.monotonic() - started:.0f} s on this machine", flush=True)
    (args.work_dir / "compare.txt").write_text(run.stdout, encoding="utf-8")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
