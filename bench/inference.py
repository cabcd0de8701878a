"""Inference benchmark of the LiteMedSAM engine against this machine's compute limit, with a Dice check.

Run from the repository root::

    .venv/bin/python bench/inference.py [--images 4] [--repeats 3] [--threads N] [--cache-dir PATH]
                                        [--classifier isa_densenet|resnet50|swin_t] [--json PATH]

In one run it prints:

1. the machine: a large fp32 and bf16 matrix product's rate (GFLOP/s, best of several, measured before and
   after the variants), the encoder's GFLOP per image (counted with ``torch.utils.flop_counter``) and so the
   fp32 compute limit of the encoder (GFLOP over the fp32 rate);
2. per engine variant (the torch reference path, torch as packaged, torch bf16 autocast, OpenVINO in
   float32 (the node's default) and bf16, OpenVINO's bf16 encoder with its float32 decoder, the OpenVINO
   decoder called with the torch path's two boxes at a time instead of all of an image's boxes): ms per
   image for the encoder, its ratio to the fp32 limit, box mode's decoder (one box), the automatic mode's
   mask generation and both modes end to end (prepare + encoder + decoder + SAM-IE enhancement). The
   automatic mode is timed as the node runs it, ``SamSegmenter.segment`` without boxes and with the
   phantoms' Modality (input filter, encoder, proposals, tight re-prompts, structure filter); its mask
   generation is that less the encoder. The
   variants run interleaved, round after round, on the same phantoms; the table shows the median round
   (other work on a shared machine only ever adds time, and hits all variants alike);
3. the Dice check: every variant's mask for every prompt (the automatic mode's proposals and a centre box)
   on phantoms and pydicom's real CT, MR and ultrasound images, against the fp32 eager reference. A variant
   whose smallest Dice is below 0.99 does not qualify as a default;
4. the other stages at one image per call: prepare, enhancement, classifier (the node runs without one
   unless configured, so it is not in the end-to-end rows).

``--cache-dir`` is where the OpenVINO graphs are exported (default: the node's, the user's cache folder).
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samie_node.config import EngineSettings, SegmenterSettings, Settings
from samie_node.engine.automatic import profile_name, proposal_boxes
from samie_node.engine.classify import CheckpointContent, Classifier, ClassLabel, Preprocessing, build_model
from samie_node.engine.device import cpu_has_native_bf16, describe_device, select_device
from samie_node.engine.enhance import sam_ie
from samie_node.engine.models import engine_cache
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.runtime_openvino import BOXES_PER_CALL, OpenVinoSam, load_openvino
from samie_node.engine.sam import Placement, SamRuntime, SamSegmenter
from samie_node.engine.weights import load_litemedsam
from samie_node.testing.synthetic import disc_on_speckle, synthetic_us_dataset

#: The Dice every mask of a default path must reach against the fp32 eager reference.
MASK_DICE = 0.99
#: pydicom's bundled real images for the Dice check: CT, MR, ultrasound (RGB and YBR), palette ultrasound.
REAL_IMAGES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "examples_palette.dcm",
)
CPU = torch.device("cpu")
#: The phantoms' DICOM Modality (``synthetic_us_dataset``), which the node hands to the segmenter.
PHANTOM_MODALITY = "US"


def _proposals(segmenter: SamSegmenter, image: np.ndarray) -> np.ndarray:
    """The automatic mode's first boxes for ``image``, with the profile the image itself chooses."""
    profiles = segmenter.settings.profiles
    return proposal_boxes(image, profiles[profile_name(profiles, "", image)])


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best rate of a ``size`` x ``size`` matrix product in ``dtype`` on the CPU, in GFLOP/s."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def encoder_gflop(segmenter: SamSegmenter) -> float:
    """The encoder's GFLOP for one 256 px image (multiply-adds count two)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        segmenter.model.image_encoder(torch.zeros(1, 3, 256, 256))
    return counter.get_total_flops() / 1e9


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


class _MixedRuntime:
    """One OpenVINO runtime's encoder with another's decoder (the bf16 encoder, the fp32 decoder)."""

    name = "openvino"

    def __init__(self, encoder: OpenVinoSam, decoder: OpenVinoSam) -> None:
        self.encoder, self.decoder = encoder, decoder

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(batch)

    def decode(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.decode(features, boxes)


def _variants(args: argparse.Namespace, settings: SegmenterSettings) -> dict[str, SamSegmenter]:
    """The engine variants, the fp32 torch reference first; OpenVINO ones share one export."""
    reference = load_litemedsam(settings, Placement(CPU, None, 1, 2))
    packaged = load_litemedsam(settings, Placement(CPU, None, 1, 2), optimise=False)
    bf16 = SamSegmenter(reference.model, reference.identity, settings, Placement(CPU, torch.bfloat16, 1, 2), lite=True)
    variants = {"torch fp32 (reference)": reference, "torch fp32, as packaged": packaged, "torch bf16 autocast": bf16}
    threads = torch.get_num_threads()
    runtimes = {}
    for precision, label in ((None, "fp32"), (torch.bfloat16, "bf16")):
        runtimes[label] = load_openvino(
            reference.model, reference.weights_sha256, args.cache_dir, precision=precision, threads=threads
        )
    mixed = _MixedRuntime(runtimes["bf16"], runtimes["fp32"])
    rows: list[tuple[str, SamRuntime, torch.dtype | None, int]] = [
        ("OpenVINO fp32", runtimes["fp32"], None, BOXES_PER_CALL),
        ("OpenVINO fp32, 2 boxes a decoder call", runtimes["fp32"], None, 2),
        ("OpenVINO bf16 encoder, fp32 decoder", mixed, None, BOXES_PER_CALL),
        ("OpenVINO bf16", runtimes["bf16"], torch.bfloat16, BOXES_PER_CALL),
    ]
    for name, runtime, precision, boxes in rows:
        placement = Placement(CPU, precision, 1, boxes)
        variants[name] = SamSegmenter(
            reference.model, reference.identity, settings, placement, lite=True, runtime=runtime
        )
    return variants


def _phantoms(count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[Any]]:
    rng = np.random.default_rng(0)
    samples = [disc_on_speckle(256, rng=rng) for _ in range(count)]
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


def _automatic(segmenter: SamSegmenter, image: np.ndarray) -> object:
    """The automatic mode as the node runs it: ``SamSegmenter.segment`` without boxes, with the phantoms'
    Modality (its input filter, encoder, proposals, tight re-prompts and structure filter)."""
    return segmenter.segment([image], modalities=[PHANTOM_MODALITY])


def _round(segmenter: SamSegmenter, images: list[np.ndarray], boxes: list[np.ndarray]) -> dict[str, float]:
    """One pass of a variant over the phantoms: ms per image of each stage.

    ``auto_call`` is the whole automatic mode (encoder included); ``auto`` is that less this round's encoder.
    """
    embeddings: list[Any] = []
    encoder = _seconds(lambda: embeddings.extend(segmenter.embed([image])[0] for image in images))
    pairs = list(zip(embeddings, boxes, strict=True))
    box = _seconds(lambda: [segmenter._segment_boxes(e, b) for e, b in pairs])
    auto_call = _seconds(lambda: [_automatic(segmenter, image) for image in images])
    stages = (("encoder", encoder), ("box", box), ("auto_call", auto_call), ("auto", auto_call - encoder))
    return {name: 1000 * value / len(images) for name, value in stages}


def _timings(
    variants: dict[str, SamSegmenter], images: list[np.ndarray], boxes: list[np.ndarray], repeats: int
) -> dict[str, dict[str, float]]:
    """Median over interleaved rounds of each variant's stage times (one warm-up round first)."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for index in range(repeats + 1):
        for name, segmenter in variants.items():
            result = _round(segmenter, images, boxes)
            if index:
                rounds[name].append(result)
    return {
        name: {stage: statistics.median(r[stage] for r in results) for stage in results[0]}
        for name, results in rounds.items()
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def _dice_images(phantoms: list[np.ndarray]) -> list[np.ndarray]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    images = list(phantoms)
    for name in REAL_IMAGES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            images.append(prepare_dataset(dcmread(str(path)), max_pixels=10**8)[0].image)
    return images


def _dice_check(variants: dict[str, SamSegmenter], images: list[np.ndarray]) -> dict[str, tuple[float, int, int]]:
    """Per variant: (smallest Dice against the reference, masks at >= MASK_DICE, masks compared)."""
    reference_name = next(iter(variants))
    reference = variants[reference_name]
    prompts, expected = [], []
    for image in images:
        height, width = image.shape[:2]
        centre = np.array([[0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height]], np.float32)
        prompts.append(np.concatenate([_proposals(reference, image), centre]))
        expected.append(reference.segment([image], [prompts[-1]])[0].masks)
    checks = {}
    for name, segmenter in variants.items():
        scores = [
            _dice(ours, theirs)
            for image, boxes, truth in zip(images, prompts, expected, strict=True)
            for ours, theirs in zip(segmenter.segment([image], [boxes])[0].masks, truth, strict=True)
        ]
        checks[name] = (min(scores), sum(score >= MASK_DICE for score in scores), len(scores))
    return checks


def _other_stages(
    args: argparse.Namespace, segmenter: SamSegmenter, images: list[np.ndarray], datasets: list[Any]
) -> dict[str, float]:
    """ms per image of prepare, SAM-IE enhancement and the classifier, one image per call, median of rounds."""
    labels = [ClassLabel("a", "A", "99BENCH", "A"), ClassLabel("b", "B", "99BENCH", "B")]
    content = CheckpointContent(
        arch=args.classifier, labels=labels, input_mode="both", preprocessing=Preprocessing(args.classifier_size)
    )
    classifier = Classifier(build_model(args.classifier, 2), content, sha256="", device=CPU, precision=None)
    classifier.batch_size = 1
    masks = [segmenter.segment([image], modalities=[PHANTOM_MODALITY])[0] for image in images]
    enhanced = [sam_ie(i, m).image for i, m in zip(images, masks, strict=True)]
    stages: dict[str, Callable[[], object]] = {
        "prepare (DICOM to 8-bit RGB)": lambda: [prepare_dataset(d, max_pixels=10**9) for d in datasets],
        "SAM-IE enhancement": lambda: [sam_ie(i, m) for i, m in zip(images, masks, strict=True)],
        f"classifier ({args.classifier} {args.classifier_size} px, original + enhanced)": lambda: [
            classifier.predict([i], [e]) for i, e in zip(images, enhanced, strict=True)
        ],
    }
    result = {}
    for name, call in stages.items():
        call()
        result[name] = 1000 * statistics.median(_seconds(call) for _ in range(args.repeats)) / len(images)
    return result


def _print(console: Console, report: dict[str, Any]) -> None:
    machine = report["machine"]
    console.print(
        f"fp32 matrix product {machine['fp32_gflops']:.0f} GFLOP/s, bf16 {machine['bf16_gflops']:.0f} GFLOP/s "
        f"(best of the runs before and after); encoder {machine['encoder_gflop']:.1f} GFLOP per image; "
        f"fp32 limit {machine['fp32_limit_ms']:.0f} ms per image (bf16: {machine['bf16_limit_ms']:.0f} ms)"
    )
    table = Table(title="LiteMedSAM engine variants, ms per image (median of interleaved rounds)")
    columns = ("variant", "encoder", "x fp32 limit", "box decoder", "auto masks", "box e2e", "auto e2e", "Dice min")
    for column in (*columns, f"masks >= {MASK_DICE}"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, row in report["variants"].items():
        table.add_row(
            name,
            f"{row['encoder']:.0f}",
            f"{row['encoder'] / machine['fp32_limit_ms']:.2f}",
            f"{row['box']:.0f}",
            f"{row['auto']:.0f}",
            f"{row['box_e2e']:.0f}",
            f"{row['auto_e2e']:.0f}",
            f"{row['dice_min']:.4f}",
            f"{row['dice_ok']}/{row['dice_n']}",
        )
    console.print(table)
    stages = Table(title="other stages (one image per call), ms per image")
    stages.add_column("stage")
    stages.add_column("ms", justify="right")
    for name, value in report["stages"].items():
        stages.add_row(name, f"{value:.1f}")
    console.print(stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=engine_cache(Settings()))
    parser.add_argument("--classifier", choices=["isa_densenet", "resnet50", "swin_t"], default="isa_densenet")
    parser.add_argument("--classifier-size", type=int, default=96)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    select_device(EngineSettings(device="cpu", torch_threads=args.threads))
    console = Console() if sys.stdout.isatty() else Console(width=160)  # whole table in a log
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"device: {describe_device(CPU)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"native CPU bf16 {'yes' if cpu_has_native_bf16() else 'no'}; load average at start {load:.2f}"
    )
    console.print(header)
    rates = [(matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16))]
    settings = SegmenterSettings()
    variants = _variants(args, settings)
    gflop = encoder_gflop(variants["torch fp32 (reference)"])
    images, boxes, datasets = _phantoms(args.images)
    timings = _timings(variants, images, boxes, args.repeats)
    rates.append((matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)))
    checks = _dice_check(variants, _dice_images(images[:2]))
    stages = _other_stages(args, variants["OpenVINO fp32"], images, datasets)
    fp32, bf16 = max(r[0] for r in rates), max(r[1] for r in rates)
    common = stages["prepare (DICOM to 8-bit RGB)"] + stages["SAM-IE enhancement"]
    report: dict[str, Any] = {
        "header": header,
        "machine": {
            "fp32_gflops": fp32,
            "bf16_gflops": bf16,
            "rates_before_after": rates,
            "encoder_gflop": gflop,
            "fp32_limit_ms": 1000 * gflop / fp32,
            "bf16_limit_ms": 1000 * gflop / bf16,
        },
        "variants": {
            name: {
                **row,
                "box_e2e": common + row["encoder"] + row["box"],
                "auto_e2e": common + row["auto_call"],
                "dice_min": checks[name][0],
                "dice_ok": checks[name][1],
                "dice_n": checks[name][2],
            }
            for name, row in timings.items()
        },
        "stages": stages,
    }
    _print(console, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
