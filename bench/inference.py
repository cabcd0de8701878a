"""Inference benchmark of the engine, stage by stage: prepare, encoder, decoder, enhancement, classifier.

Run from the repository root::

    .venv/bin/python bench/inference.py [--batch-sizes 1,8,32] [--repeats 2] [--precision fp32|bf16|auto]
                                        [--device auto|cpu|cuda] [--threads N] [--image-size 256]
                                        [--classifier isa_densenet|resnet50|swin_t] [--classifier-size 96]
                                        [--baseline] [--json PATH]

``--batch-sizes``
    Images per call of each stage (default 1,8,32; ``1,8`` is quicker). The encoder is called on a
    batch tensor of exactly that many images, so the table shows what batching does on this device.
``--repeats``
    Timed repetitions per cell after one warm-up call; the fastest is reported (the median is in the
    JSON), because on a shared machine the noise only ever adds time.
``--precision``
    fp32, bf16 (autocast) or auto (what the node would pick, see ``samie_node.engine.device``).
``--baseline``
    Also time the LiteMedSAM encoder as the package builds it (batch norm not folded, contiguous
    layout) against the node's, interleaved, to show what the node's changes are worth.
``--json``
    Write every measurement to a JSON file as well.

Images are synthetic 256 px ultrasound-like phantoms with a bright disc, wrapped as DICOM for the prepare
stage. The end-to-end rows add prepare, encoder, decoder and enhancement per image (the classifier is
listed separately because the node runs without one unless configured); on a CPU they use the batch-1
encoder time, because the node encodes one image per call there (measured faster than batching).
The header records the device,
the torch version, the thread count and the load average at start (other work on the machine inflates
every number).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samie_node.config import EngineSettings, SegmenterSettings
from samie_node.engine.classify import CheckpointContent, Classifier, ClassLabel, Preprocessing, build_model
from samie_node.engine.device import cpu_has_native_bf16, describe_device, select_device, select_precision
from samie_node.engine.enhance import sam_ie
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.sam import Placement
from samie_node.engine.weights import load_litemedsam
from samie_node.testing.synthetic import disc_on_speckle, synthetic_us_dataset


def _time(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(fastest, median) seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def _images(count: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray], list[Any]]:
    rng = np.random.default_rng(0)
    samples = [disc_on_speckle(size, rng=rng) for _ in range(count)]
    boxes = []
    for sample in samples:
        rows, cols = np.nonzero(sample.mask)
        boxes.append(np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32))
    datasets = [
        synthetic_us_dataset(
            s.image,
            sop_instance_uid=f"2.25.{index + 1}",
            study_instance_uid="2.25.100",
            series_instance_uid="2.25.200",
            instance_number=index + 1,
        )
        for index, s in enumerate(samples)
    ]
    return [s.image for s in samples], boxes, datasets


def _classifier(arch: str, size: int, device: torch.device, precision: torch.dtype | None) -> Classifier:
    labels = [ClassLabel("a", "A", "99BENCH", "A"), ClassLabel("b", "B", "99BENCH", "B")]
    content = CheckpointContent(arch=arch, labels=labels, input_mode="both", preprocessing=Preprocessing(size))
    return Classifier(build_model(arch, 2), content, sha256="", device=device, precision=precision)


def _bench_batch(
    batch: int,
    chunk: list[np.ndarray],
    chunk_boxes: list[np.ndarray],
    chunk_sets: list[Any],
    settings: SegmenterSettings,
    device: torch.device,
    precision: torch.dtype | None,
    args: argparse.Namespace,
) -> list[tuple[str, tuple[float, float]]]:
    """Time every stage on ``batch`` images; the encoder gets them as one batch tensor."""
    segmenter = load_litemedsam(settings, Placement(device, precision, batch, 2 if device.type == "cpu" else 8))
    rows = [("prepare", _time(lambda: [prepare_dataset(d, max_pixels=10**9) for d in chunk_sets], args.repeats))]
    embeddings = segmenter.embed(chunk)
    rows.append(("encoder (LiteMedSAM)", _time(lambda: segmenter.embed(chunk), args.repeats)))
    pairs = list(zip(embeddings, chunk_boxes, strict=True))
    rows.append(
        ("decoder, box mode (1 box)", _time(lambda: [segmenter._segment_boxes(e, b) for e, b in pairs], args.repeats))
    )
    started = time.perf_counter()  # one timed pass (the decoder is warm from box mode): it is the slow stage
    masks = [segmenter._segment_proposals(i, e) for i, e in zip(chunk, embeddings, strict=True)]
    elapsed = time.perf_counter() - started
    rows.append(("mask generation, automatic", (elapsed, elapsed)))
    outputs = list(zip(chunk, masks, strict=True))
    rows.append(("enhancement (SAM-IE)", _time(lambda: [sam_ie(i, m) for i, m in outputs], args.repeats)))
    classifier = _classifier(args.classifier, args.classifier_size, device, precision)
    classifier.batch_size = batch
    enhanced = [sam_ie(i, m).image for i, m in outputs]
    rows.append(
        (
            f"classifier ({args.classifier} {args.classifier_size} px, both)",
            _time(lambda: classifier.predict(chunk, enhanced), args.repeats),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--classifier", choices=["isa_densenet", "resnet50", "swin_t"], default="isa_densenet")
    parser.add_argument("--classifier-size", type=int, default=96)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    batch_sizes = [int(v) for v in args.batch_sizes.split(",") if v]

    engine = EngineSettings(device=args.device, precision=args.precision, torch_threads=args.threads)
    device = select_device(engine)
    precision = select_precision(engine, device)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # whole table in a log
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"device: {describe_device(device)} ({device.type}); torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; precision {precision or 'fp32'}; native CPU bf16 "
        f"{'yes' if cpu_has_native_bf16() else 'no'}; load average at start {load:.2f}"
    )
    console.print(header)

    biggest = max(batch_sizes)
    images, boxes, datasets = _images(biggest, args.image_size)
    results: list[dict[str, Any]] = []

    def record(stage: str, batch: int, seconds: tuple[float, float], per: int) -> None:
        best, median = seconds
        results.append(
            {
                "stage": stage,
                "batch": batch,
                "ms_per_image": 1000 * best / per,
                "images_per_s": per / best,
                "median_ms_per_image": 1000 * median / per,
            }
        )

    settings = SegmenterSettings()
    for batch in batch_sizes:
        for stage, seconds in _bench_batch(
            batch, images[:batch], boxes[:batch], datasets[:batch], settings, device, precision, args
        ):
            record(stage, batch, seconds, batch)

    if args.baseline:
        plain = load_litemedsam(settings, Placement(device, precision, 1, 2), optimise=False)
        tuned = load_litemedsam(settings, Placement(device, precision, 1, 2))
        # interleaved, so a burst of other work on the machine hits both alike
        pairs = [
            (_time(lambda: plain.embed(images[:1]), 1), _time(lambda: tuned.embed(images[:1]), 1))
            for _ in range(max(3, args.repeats))
        ]
        record("encoder as packaged (baseline)", 1, (min(p[0][0] for p in pairs), min(p[0][1] for p in pairs)), 1)
        record("encoder as the node runs it", 1, (min(p[1][0] for p in pairs), min(p[1][1] for p in pairs)), 1)

    per_stage: dict[tuple[str, int], float] = {(r["stage"], r["batch"]): r["ms_per_image"] for r in results}
    for batch in batch_sizes:
        # the node encodes one image per call on a CPU (faster there), a whole batch on a GPU
        encoder_batch = 1 if device.type == "cpu" and 1 in batch_sizes else batch
        common = (
            per_stage[("prepare", batch)]
            + per_stage[("encoder (LiteMedSAM)", encoder_batch)]
            + per_stage[("enhancement (SAM-IE)", batch)]
        )
        for stage, decoder in (
            ("end to end, box mode", "decoder, box mode (1 box)"),
            ("end to end, automatic mode", "mask generation, automatic"),
        ):
            total = common + per_stage[(decoder, batch)]
            results.append(
                {
                    "stage": stage,
                    "batch": batch,
                    "ms_per_image": total,
                    "images_per_s": 1000 / total,
                    "median_ms_per_image": None,
                }
            )

    table = Table(title="samie-node engine inference")
    for column in ("stage", "batch", "ms / image", "images / s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in results:
        table.add_row(row["stage"], str(row["batch"]), f"{row['ms_per_image']:.1f}", f"{row['images_per_s']:.2f}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
