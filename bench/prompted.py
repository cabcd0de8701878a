"""The prompted path: Dice and time of drawn rectangles answered on generated phantoms (not a timed test).

Run::

    .venv/bin/python bench/prompted.py [--phantoms 4] [--repeat 3]

Each phantom (an ultrasound image with a known disc, 240 x 320) gets an OHIF-style report with one
rectangle around the disc and, for the second row, ten rectangles (the disc's and nine elsewhere). The
time is the node's prompted work once the report is there: read the report, fit the boxes, run the engine
on the drawn frames (LiteMedSAM, the configured runtime), encode the SEG and SR; the quiet period and the
network are not in it (``bench/e2e.py`` measures those for the automatic path). The rectangle's margin
around the disc is chosen on the *tune* phantoms (seeds 100 +) and the Dice reported on the *report*
phantoms (seeds 200 +), so the reported number is not fitted to the phantoms it is measured on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.config import Settings, load_settings  # noqa: E402
from samie_node.encode.templates import Templates, load_templates  # noqa: E402
from samie_node.engine.backend import Engine, open_engine  # noqa: E402
from samie_node.engine.selection import Candidate  # noqa: E402
from samie_node.prompted import annotation_objects, encode_prompted, plan_prompts  # noqa: E402
from samie_node.scheduler import run_one  # noqa: E402
from samie_node.testing.drawn import rectangle_report  # noqa: E402
from samie_node.testing.sample_studies import Lesion, ultrasound_image, write_datasets  # noqa: E402
from samie_node.timing import StageTimer  # noqa: E402

ROWS, COLUMNS = 240, 320
MARGINS = (2.0, 6.0, 12.0)


def box_around(lesion: Lesion, margin: float) -> tuple[float, float, float, float]:
    r = lesion.radius + margin
    return (lesion.center_column - r, lesion.center_row - r, lesion.center_column + r, lesion.center_row + r)


def elsewhere(count: int) -> list[tuple[float, float, float, float]]:
    """Boxes along the image's top and bottom edges, away from the central disc."""
    boxes = []
    for index in range(count):
        x0 = 8.0 + (index % 5) * 60.0
        y0 = 8.0 if index < 5 else ROWS - 48.0
        boxes.append((x0, y0, x0 + 40.0, y0 + 36.0))
    return boxes


def answer(folder: Path, engine: Engine, templates: Templates, settings: Settings) -> tuple[float, np.ndarray]:
    """(ms for the prompted work, the first segment's mask)."""
    paths = sorted(folder.glob("*.dcm"))
    started = time.perf_counter()
    images = [Candidate(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    images = [c for c in images if "Rows" in c.header]
    job = plan_prompts(annotation_objects(paths, settings.output.manufacturer), images)
    timer = StageTimer()
    inference = run_one(engine, job.images, settings, timer, job.frame_prompts())
    models = engine.models_info(wait_s=60.0)
    if models is None:
        raise SystemExit("the engine reported no models")
    result = encode_prompted(job, inference, models, templates, settings, timer)
    elapsed = (time.perf_counter() - started) * 1000
    seg_uid = next(o.sop_instance_uid for o in result.outputs if o.kind == "SEG")
    return elapsed, result.segment_mask(seg_uid, 1, str(job.images[0].header.SOPInstanceUID))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def run_case(
    tmp: Path, seed: int, margin: float, boxes: int, engine: Engine, templates: Templates, settings: Settings
) -> tuple[float, float]:
    image, lesion = ultrasound_image(rows=ROWS, columns=COLUMNS, seed=seed)
    report = rectangle_report(image, [box_around(lesion, margin), *elsewhere(boxes - 1)])
    folder = tmp / f"{seed}-{margin}-{boxes}"
    write_datasets([image, report], folder)
    ms, mask = answer(folder, engine, templates, settings)
    return ms, dice(mask, lesion.mask(ROWS, COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=4, help="phantoms in each of the tune and report sets")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per report phantom (median)")
    args = parser.parse_args()
    settings = load_settings(None, {"engine": {"device": "cpu"}})
    templates = load_templates()
    engine = open_engine(settings)
    console = Console()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        run_case(tmp, 99, 6.0, 1, engine, templates, settings)  # warm-up
        tune = {
            m: statistics.mean(
                run_case(tmp, 100 + s, m, 1, engine, templates, settings)[1] for s in range(args.phantoms)
            )
            for m in MARGINS
        }
        margin = max(tune, key=lambda m: tune[m])
        table = Table(title=f"prompted path, LiteMedSAM ({settings.engine.runtime}), margin {margin:g} px (tuned)")
        for column in ("boxes on the image", "Dice min (report set)", "Dice mean", "ms median", "ms max"):
            table.add_column(column, justify="right")
        for boxes in (1, 10):
            times, dices = [], []
            for seed in range(200, 200 + args.phantoms):
                for _ in range(args.repeat):
                    ms, score = run_case(tmp, seed, margin, boxes, engine, templates, settings)
                    times.append(ms)
                dices.append(score)
            table.add_row(
                str(boxes),
                f"{min(dices):.4f}",
                f"{statistics.mean(dices):.4f}",
                f"{statistics.median(times):.0f}",
                f"{max(times):.0f}",
            )
        console.print("tune set, mean Dice by margin: " + ", ".join(f"{m:g} px {d:.4f}" for m, d in tune.items()))
        console.print(table)
    engine.close()


if __name__ == "__main__":
    main()
