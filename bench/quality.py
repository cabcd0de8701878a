"""Quality of the automatic regions: generated images of every kind, and pydicom's real images.

Run from the repository root::

    .venv/bin/python bench/quality.py [--seed 6 ... --seed 10] [--per-kind 12] [--negatives 2] [--controls 6]
                                      [--first-try 40] [--sheet docs/automatic-regions.png] [--json PATH]
                                      [--skip-phantoms]

The structure profiles (``segmenter.profiles``) were tuned on the phantoms of seeds 1 to 5
(``TUNED_SEEDS``, with ``bench/tune_structures.py``); the figures that count are those of other seeds, sets
the defaults never saw (the default: 6 to 10). Each seed's table says which it is, and the report seeds
are also scored together (five seeds move less with a single lesion than one seed does). Per seed and kind
of image (breast-ultrasound-like masses bright and dark, pigmented skin lesions with hair, optic discs on fundus-like
photographs, CT and MR structures, and noise-only controls) it prints:

- Dice of the kept regions (their union against the lesions' union, images with a lesion);
- the box-mode ceiling: the same model prompted with each true lesion's own bounding box, so the gap
  between the two columns is what the automatic mode loses by finding the boxes itself;
- lesion recall (a lesion is found when a kept region overlaps it with IoU >= 0.5), the share of kept
  pixels outside every lesion, and how many lesion-free images got any region.

Then, over the report seeds (or every seed run when none is a report seed), recall by each lesion's
visibility: the contrast with its ring that the structure filter measures, taken on the lesion's true
mask. A lesion below a profile's ``min_contrast`` cannot be kept whatever the decoder gives, so the table
says how much of a kind's recall is lost to faint lesions and how much to the rest.

Then the first-try set (``--first-try``, 40 images by default, seed ``FIRST_TRY_SEED``): what a new user
tries first, one bright or dark ellipse or disc on plain speckle at 256 or 400 px, a quarter of them
against the image edge, 4 of them speckle alone (``samie_node.testing.phantoms.us_first_try``). It is not
part of the seeded mixed sets, so their figures stay comparable from run to run.

Then every image bundled with pydicom (read from the installed package, never downloaded; the first frame
of multi-frame ones): its modality, the profile chosen, and each kept region's area and measurements.
``--sheet`` writes a contact sheet (truth in green, kept regions in the SEG's colours) of the last seed
and the real images. The node's engine runs as the node runs it (OpenVINO when it loads, else torch).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pydicom.data

from samie_node.config import Settings
from samie_node.encode.templates import load_templates
from samie_node.engine.models import load_models
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.sam import SamSegmenter
from samie_node.testing.phantoms import Phantom, benchmark_set, first_try_set
from samie_node.testing.quality import (
    KIND_MODALITY,
    VISIBILITY_BANDS,
    ImageScore,
    KindSummary,
    recall_by_visibility,
    score_set,
    summarise,
)

#: The seeds whose generated sets the structure profiles were tuned on: not a report.
TUNED_SEEDS = frozenset({1, 2, 3, 4, 5})
#: The seed of the first-try set (one ellipse or disc on speckle). The one-off sweeps that studied this
#: generator's failures used other seeds (101 and 202); no setting was chosen on this one.
FIRST_TRY_SEED = 303


def _real_images() -> list[tuple[str, str, np.ndarray]]:
    """(name, modality, first frame) of every pydicom test image that decodes, distinct pixels."""
    root = os.path.dirname(pydicom.data.__file__)
    seen: set[bytes] = set()
    found = []
    for path in sorted(glob.glob(root + "/**/*.dcm", recursive=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = pydicom.dcmread(path)
                frame = prepare_dataset(dataset, max_pixels=10**8)[0]
            except Exception:
                continue
        key = hashlib.sha1(frame.image.tobytes() + str(frame.image.shape).encode()).digest()
        if min(frame.image.shape[:2]) < 32 or key in seen:
            continue
        seen.add(key)
        found.append((Path(path).stem, frame.modality, frame.image))
    return found


def _tile(image: np.ndarray, truth: list[np.ndarray], regions: list[np.ndarray], label: str) -> np.ndarray:
    picture = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 200))
    segments = load_templates().segments
    for mask in truth:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, (0, 255, 0), thickness)
    for number, mask in enumerate(regions, start=1):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, segments.colour(number), thickness)
    tile = cv2.resize(picture, (200, 200), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, label[:28], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 0), 1)
    return np.asarray(tile)


def _print_table(
    title: str, auto: list[ImageScore], boxed: list[ImageScore]
) -> tuple[list[KindSummary], dict[str, float]]:
    """Print one table; the automatic mode's summaries per kind and the box-mode ceilings."""
    ceilings = {s.kind: s.mean_dice for s in summarise(boxed)}
    print(f"\n{title}")
    header = ("kind", "images", "lesions", "Dice", "box Dice", "recall", "FP share", "neg.")
    print("{:14} {:>6} {:>7} {:>6} {:>8} {:>6} {:>8} {:>5}".format(*header))
    summaries = summarise(auto)
    for s in summaries:
        negatives = f"{s.negatives_with_region}/{s.negatives}"
        print(
            f"{s.kind:14} {s.images:6d} {s.lesions:7d} {s.mean_dice:6.3f} {ceilings.get(s.kind, float('nan')):8.3f}"
            f" {s.recall:6.2f} {s.false_positive_share:8.3f} {negatives:>5}"
        )
    return summaries, ceilings


def _phantom_table(
    segmenter: SamSegmenter, phantoms: list[Phantom], seed: int
) -> tuple[list[dict[str, Any]], list[ImageScore], list[ImageScore]]:
    auto = score_set(segmenter, phantoms, visibility=True)
    boxed = score_set(segmenter, [p for p in phantoms if p.lesions], box_mode=True)
    role = "tuned on" if seed in TUNED_SEEDS else "report, not tuned on"
    summaries, ceilings = _print_table(f"seed {seed} ({role}): {len(phantoms)} images", auto, boxed)
    rows = [
        {**s.__dict__, "box_dice": ceilings.get(s.kind, float("nan")), "seed": seed, "tuned": seed in TUNED_SEEDS}
        for s in summaries
    ]
    return rows, auto, boxed


def _print_visibility(title: str, scores: list[ImageScore]) -> dict[str, list[tuple[int, int]]]:
    """Print recall by lesion visibility (see the module notes); return the table."""
    table = recall_by_visibility(scores)
    bands = [f"{low:g}-{high:g}" if high != float("inf") else f">= {low:g}" for low, high in VISIBILITY_BANDS]
    print(f"\n{title}: lesions found / lesions, by the contrast of the true mask with its ring")
    print("{:14}".format("kind") + "".join(f" {band:>9}" for band in bands))
    for kind, row in table.items():
        print(f"{kind:14}" + "".join(f" {f'{hits}/{total}':>9}" for hits, total in row))
    return table


def _real_table(segmenter: SamSegmenter) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    print("\npydicom's images (automatic mode, the modality's profile)")
    scores = "regions: area %, contrast, edge_local, edge_fine, z, IoU"
    print(f"{'image':28} {'mod.':4} {'profile':7} {'size':>9} {'s':>5}  {scores}")
    rows, tiles = [], []
    for name, modality, image in _real_images():
        started = time.perf_counter()
        profile, regions = segmenter.explain(image, modality)
        seconds = time.perf_counter() - started
        kept = [r for r in regions if r.kept]
        masks = [r.refined if r.refined is not None else r.mask for r in kept]
        described = [
            f"{100 * float(m.mean()):.1f} {r.features['contrast']:.1f} {r.features['edge_local']:.1f}"
            f" {r.features['edge_fine']:.1f} {r.features['z']:.0f} {r.pred_iou:.2f}"
            for r, m in zip(kept, masks, strict=True)
        ]
        size = f"{image.shape[1]}x{image.shape[0]}"
        print(f"{name[:28]:28} {modality[:4]:4} {profile:7} {size:>9} {seconds:5.2f}  {'; '.join(described) or '-'}")
        rows.append({"image": name, "modality": modality, "profile": profile, "regions": described})
        tiles.append(_tile(image, [], masks, f"{name} {modality} {len(kept)}"))
    return rows, tiles


def _sheet(tiles: list[np.ndarray], path: Path, columns: int = 8) -> None:
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    picture = np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"\ncontact sheet: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="a generated set (repeat; default 6 to 10)")
    parser.add_argument("--per-kind", type=int, default=12)
    parser.add_argument("--negatives", type=int, default=2)
    parser.add_argument("--controls", type=int, default=6)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-phantoms", action="store_true", help="only pydicom's images")
    parser.add_argument("--first-try", type=int, default=40, help="images of the first-try set (0: none)")
    args = parser.parse_args()
    segmenter = load_models(Settings()).segmenter
    if not isinstance(segmenter, SamSegmenter):
        raise SystemExit("the embedded LiteMedSAM is needed")
    runtime = segmenter.runtime.name if segmenter.runtime is not None else "torch"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; engine: LiteMedSAM, {runtime}"
    )
    report: dict[str, Any] = {"phantoms": [], "real": []}
    tiles: list[np.ndarray] = []
    seeds = args.seed or [6, 7, 8, 9, 10]
    pooled: tuple[list[ImageScore], list[ImageScore]] = ([], [])
    all_auto: list[ImageScore] = []
    for seed in () if args.skip_phantoms else seeds:
        phantoms = benchmark_set(seed, args.per_kind, args.negatives, args.controls)
        rows, auto, boxed = _phantom_table(segmenter, phantoms, seed)
        report["phantoms"] += rows
        all_auto.extend(auto)
        if seed not in TUNED_SEEDS:
            pooled[0].extend(auto)
            pooled[1].extend(boxed)
        if seed == seeds[-1] and args.sheet:
            for item in phantoms[:: max(1, len(phantoms) // 24)][:24]:
                masks = list(segmenter.segment([item.image], modalities=[KIND_MODALITY[item.kind]])[0].masks)
                tiles.append(_tile(item.image, item.lesions, masks, f"{item.kind} seed {seed}"))
    if args.first_try and not args.skip_phantoms:
        tries = first_try_set(FIRST_TRY_SEED, args.first_try)
        auto = score_set(segmenter, tries)
        boxed = score_set(segmenter, [p for p in tries if p.lesions], box_mode=True)
        title = f"first try (seed {FIRST_TRY_SEED}, not tuned on): one ellipse or disc on speckle, {len(tries)} images"
        summaries, ceilings = _print_table(title, auto, boxed)
        report["first_try"] = [{**s.__dict__, "box_dice": ceilings.get(s.kind)} for s in summaries]
    report_seeds = [seed for seed in seeds if seed not in TUNED_SEEDS]
    if not args.skip_phantoms and len(report_seeds) > 1:
        together, ceilings = _print_table(f"report seeds {', '.join(map(str, report_seeds))} together", *pooled)
        report["report_seeds_together"] = [{**s.__dict__, "box_dice": ceilings.get(s.kind)} for s in together]
    if not args.skip_phantoms:
        named = report_seeds or seeds
        scores = pooled[0] if report_seeds else all_auto
        report["visibility"] = _print_visibility(f"seeds {', '.join(map(str, named))}", scores)
    report["real"], real_tiles = _real_table(segmenter)
    if args.sheet:
        _sheet(tiles + real_tiles, args.sheet)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
