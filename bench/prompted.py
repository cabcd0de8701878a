"""The prompted path: a drawn rectangle answered with a SEG, measured inside the node and through a real PACS
(not a timed test).

Run::

    .venv/bin/python bench/prompted.py [--phantoms 3] [--repeat 3] [--loop-repeat 5] [--medsam-repeat 2]

Each phantom (an ultrasound image with a known disc, 240 x 320) gets an OHIF-style report with one
rectangle around the disc and, for the second row, ten rectangles (the disc's and nine elsewhere).

*The node's work* is timed in this process once the report is there: read the report, fit the boxes, run
the engine on the drawn frames, encode the SEG and SR; no quiet period, no network. The rectangle's margin
around the disc is chosen on the *tune* phantoms (seeds 100 +) and the Dice reported on the *report*
phantoms (seeds 200 +), so the reported number is not fitted to the phantoms it is measured on.

*The loop* is the radiologist's: a real Orthanc (DICOMweb plugin, the shipped Lua rule
``config/orthanc/forward-sr-to-samie.lua``) and ``samie-node serve`` as its modality "samie". The image is
stored in Orthanc and sent to the node (C-STORE), which processes it and returns its automatic results;
then each report is stored in Orthanc over STOW-RS, as OHIF's "Create Report" does, the Lua rule forwards
it to the node (C-STORE), and the clock runs from the STOW-RS request to the prompted SEG (and the node's
SR) stored in Orthanc, seen in Orthanc's change log. The report's arrival at the node is the time the node
indexed it (its spool index). The node's quiet period is in the loop's times; the table also shows them
less the quiet period, against the issue's target (one box back in the PACS within 3 s plus the quiet
period).

MedSAM is sized with a SAM ViT-B with random weights (its checkpoint cannot be downloaded here): the same
shapes and cost, so its times are real and its masks meaningless (no Dice).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from rich.console import Console
from rich.table import Table
from segment_anything import sam_model_registry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.config import Settings, load_settings  # noqa: E402
from samie_node.encode.templates import Templates, load_templates  # noqa: E402
from samie_node.engine.backend import Engine, open_engine  # noqa: E402
from samie_node.engine.selection import Candidate  # noqa: E402
from samie_node.prompted import annotation_objects, encode_prompted, plan_prompts  # noqa: E402
from samie_node.scheduler import run_one  # noqa: E402
from samie_node.testing.drawn import rectangle_report  # noqa: E402
from samie_node.testing.orthanc import ORTHANC_BINARY, write_orthanc_config  # noqa: E402
from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import Lesion, ultrasound_image, write_datasets  # noqa: E402
from samie_node.timing import StageTimer  # noqa: E402

ROWS, COLUMNS = 240, 320
MARGINS = (2.0, 6.0, 12.0)
BOX_COUNTS = (1, 10)
TARGET_S = 3.0
LUA = REPO / "config" / "orthanc" / "forward-sr-to-samie.lua"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
NODE_MANUFACTURER = "samie-node"
NODE_POLL_S = 0.1  # the node's study.poll_interval_s: how often it looks for studies past their quiet period
PACS_POLL_S = 0.05  # how often the bench reads Orthanc's change log

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Round:
    """One report through the PACS, in seconds from the STOW-RS request that stores it in Orthanc."""

    at_node_s: float  # the node has the report (Orthanc's Lua rule sent it over C-STORE)
    seg_s: float  # the prompted SEG is stored in Orthanc
    both_s: float  # the SEG and the node's SR are stored in Orthanc


@dataclass
class Row:
    """One line of the table: a model, a number of boxes on the image, what was measured."""

    model: str
    boxes: int
    work_ms: list[float] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)


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


def drawn(lesion: Lesion, margin: float, count: int) -> list[Box]:
    """The lesion's rectangle, then ``count - 1`` elsewhere."""
    return [box_around(lesion, margin), *elsewhere(count - 1)]


def run_case(
    tmp: Path, seed: int, margin: float, boxes: int, engine: Engine, templates: Templates, settings: Settings
) -> tuple[float, float]:
    image, lesion = ultrasound_image(rows=ROWS, columns=COLUMNS, seed=seed)
    report = rectangle_report(image, drawn(lesion, margin, boxes))
    folder = tmp / f"{seed}-{margin}-{boxes}"
    write_datasets([image, report], folder)
    ms, mask = answer(folder, engine, templates, settings)
    return ms, dice(mask, lesion.mask(ROWS, COLUMNS))


def engine_settings(segmenter: dict[str, str]) -> Settings:
    return load_settings(None, {"engine": {"device": "cpu"}, "segmenter": segmenter})


def tuned_margin(
    tmp: Path, phantoms: int, engine: Engine, templates: Templates, settings: Settings
) -> dict[float, float]:
    """Mean Dice of one rectangle per margin, on the tune phantoms."""
    return {
        m: statistics.mean(run_case(tmp, 100 + s, m, 1, engine, templates, settings)[1] for s in range(phantoms))
        for m in MARGINS
    }


def node_work(
    tmp: Path, rows: list[Row], seeds: Sequence[int], repeat: int, margin: float, engine: Engine, settings: Settings
) -> None:
    """Time the node's prompted work for each row (one warm-up first), with the Dice of the lesion's box."""
    templates = load_templates()
    run_case(tmp, 99, margin, 1, engine, templates, settings)  # warm-up
    for row in rows:
        for seed in seeds:
            for _ in range(repeat):
                ms, score = run_case(tmp, seed, margin, row.boxes, engine, templates, settings)
                row.work_ms.append(ms)
            row.dices.append(score)


# -- the loop through a real PACS ----------------------------------------------------------------------------


class Pacs:
    """Orthanc over REST and DICOMweb: what the bench stores in it, and what arrives in it."""

    def __init__(self, http_port: int) -> None:
        self.base = f"http://127.0.0.1:{http_port}"
        self.cursor = int(self.call("GET", "/changes?last")["Last"])

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stow(self, data: bytes) -> None:
        """Store one instance as OHIF's "Create Report" does: STOW-RS (the DICOMweb plugin)."""
        boundary = f"samie-bench-{uuid.uuid4().hex}"
        part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        body = part + data + f"\r\n--{boundary}--\r\n".encode()
        self.call(
            "POST", "/dicom-web/studies", body, {"Content-Type": content_type, "Accept": "application/dicom+json"}
        )

    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        """(when seen, simplified tags) of each instance stored since the last call."""
        found: list[tuple[float, dict[str, Any]]] = []
        done = False
        while not done:
            page = self.call("GET", f"/changes?since={self.cursor}&limit=100")
            seen = time.time()
            self.cursor, done = int(page["Last"]), bool(page["Done"])
            for change in page["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    found.append((seen, self.call("GET", f"/instances/{change['ID']}/simplified-tags")))
        return found

    def await_answer(self, since: float, timeout: float) -> tuple[float, float]:
        """Seconds from ``since`` (``time.time()``) to the node's SEG, and to its SEG and SR, in Orthanc."""
        seg: float | None = None
        sr: float | None = None
        deadline = since + timeout
        while seg is None or sr is None:
            if time.time() > deadline:
                raise TimeoutError(f"no SEG and SR from the node in Orthanc after {timeout:.0f} s")
            for seen, tags in self.arrivals():
                if tags.get("Modality") == "SEG":
                    seg = seg or seen
                elif tags.get("Modality") == "SR" and tags.get("Manufacturer") == NODE_MANUFACTURER:
                    sr = sr or seen
            time.sleep(PACS_POLL_S)
        return seg - since, max(seg, sr) - since


def node_config(root: Path, node_port: int, dicom_port: int, quiet: float, segmenter: dict[str, str]) -> Path:
    lines = [
        "[node]",
        f'host = "127.0.0.1"\nport = {node_port}\ndata_dir = "{root / "data"}"',
        "[limits]\ndisk_floor_bytes = 0",
        f"[study]\nquiet_period_s = {quiet}\npoll_interval_s = {NODE_POLL_S}",
        "[http]\nenabled = false",
        '[engine]\ndevice = "cpu"',
        "[segmenter]",
        *(f"{key} = {json.dumps(value)}" for key, value in segmenter.items()),
        f'[[send.destinations]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {dicom_port}',
    ]
    path = root / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def pacs_and_node(root: Path, quiet: float, segmenter: dict[str, str]) -> Iterator[tuple[Pacs, Path]]:
    """Orthanc (DICOMweb, the Lua rule) and ``samie-node serve`` as its modality "samie"; yields the PACS and
    the node's data folder. On failure the logs' ends are printed."""
    root.mkdir(parents=True)
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    orthanc_config = write_orthanc_config(
        root,
        http_port,
        dicom_port,
        DicomModalities={"samie": ["SAMIE_NODE", "127.0.0.1", node_port]},
        Plugins=[DICOMWEB_PLUGIN],
        LuaScripts=[str(LUA)],
    )
    config = node_config(root, node_port, dicom_port, quiet, segmenter)
    logs = {name: root / f"{name}.log" for name in ("orthanc", "node")}
    with logs["orthanc"].open("wb") as orthanc_log, logs["node"].open("wb") as node_log:
        orthanc = subprocess.Popen([ORTHANC_BINARY, str(orthanc_config)], stdout=orthanc_log, stderr=orthanc_log)
        node = subprocess.Popen(
            [sys.executable, "-m", "samie_node", "serve", "--config", str(config)], stdout=node_log, stderr=node_log
        )
        try:
            wait_for_port(http_port, 60, orthanc)
            wait_for_port(node_port, 300, node)
            yield Pacs(http_port), root / "data"
        except BaseException:
            for name, path in logs.items():
                print(f"--- end of {name}.log\n" + path.read_text(errors="replace")[-3000:])
            raise
        finally:
            for process in (node, orthanc):
                process.terminate()
                process.wait(60)


def node_index(data_dir: Path, sql: str, key: str) -> Any:
    """One value from the node's spool index (read-only), or None."""
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'index.sqlite3'}?mode=ro", uri=True)) as db:
        row = db.execute(sql, (key,)).fetchone()
    return row[0] if row else None


def await_done(data_dir: Path, study_uid: str, report_uid: str = "", timeout: float = 60.0) -> None:
    """Until the node has recorded the study done (and ``report_uid`` among the annotations it answered)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = node_index(data_dir, "SELECT state FROM studies WHERE study_instance_uid = ?", study_uid)
        result = node_index(data_dir, "SELECT result FROM studies WHERE study_instance_uid = ?", study_uid)
        if state == "done" and report_uid in (result or ""):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the node did not record the study done (answering {report_uid or 'nothing'})")


def through_pacs(
    root: Path, quiet: float, segmenter: dict[str, str], rows: list[Row], repeat: int, margin: float
) -> None:
    """The image processed by the node first; then ``repeat`` reports per row, each a new one."""
    image, lesion = ultrasound_image(rows=ROWS, columns=COLUMNS, seed=200)
    study_uid = str(image.StudyInstanceUID)
    with pacs_and_node(root, quiet, segmenter) as (pacs, data_dir):
        path = write_datasets([image], root / "image")[0]
        instance = pacs.call("POST", "/instances", path.read_bytes())["ID"]
        pacs.arrivals()
        started = time.time()
        pacs.call("POST", "/modalities/samie/store", json.dumps([instance]).encode())
        pacs.await_answer(started, 600)
        await_done(data_dir, study_uid)
        for row in rows:
            for index in range(repeat):
                report = rectangle_report(image, drawn(lesion, margin, row.boxes))
                data = write_datasets([report], root / f"report-{row.boxes}-{index}")[0].read_bytes()
                pacs.arrivals()  # what came before
                sent = time.time()
                pacs.stow(data)
                seg_s, both_s = pacs.await_answer(sent, 600)
                report_uid = str(report.SOPInstanceUID)
                await_done(data_dir, study_uid, report_uid)
                at_node = node_index(
                    data_dir, "SELECT received_at FROM instances WHERE sop_instance_uid = ?", report_uid
                )
                row.rounds.append(Round(float(at_node) - sent, seg_s, both_s))


def random_vit_b(path: Path) -> dict[str, str]:
    """A SAM ViT-B state dict with random weights, as MedSAM's segmenter settings."""
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return {"kind": "medsam", "medsam_checkpoint": str(path)}


# -- the table ---------------------------------------------------------------------------------------------


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median / max`` of ``values`` times ``scale``, or a dash when nothing was measured."""
    if not values:
        return "-"
    return f"{statistics.median(values) * scale:.{digits}f} / {max(values) * scale:.{digits}f}"


def table(rows: list[Row], quiet: float, title: str) -> Table:
    out = Table(title=title)
    columns = (
        "model",
        "boxes",
        "Dice min / mean",
        "node's work ms (median / max)",
        "report at the node s",
        "report in Orthanc -> SEG in Orthanc s",
        f"same less the quiet period ({quiet:g} s)",
        "report at the node -> SEG in Orthanc s",
        "-> SEG and SR s",
        f"within {TARGET_S:g} s + quiet",
    )
    for column in columns:
        out.add_column(column, justify="right")
    for row in rows:
        rounds = row.rounds
        met = sum(r.seg_s - quiet <= TARGET_S for r in rounds)
        out.add_row(
            row.model,
            str(row.boxes),
            f"{min(row.dices):.4f} / {statistics.mean(row.dices):.4f}" if row.dices else "-",
            spread(row.work_ms, digits=0),
            spread([r.at_node_s for r in rounds], digits=2),
            spread([r.seg_s for r in rounds]),
            spread([r.seg_s - quiet for r in rounds]),
            spread([r.seg_s - r.at_node_s for r in rounds]),
            spread([r.both_s for r in rounds]),
            f"{'met' if met == len(rounds) else 'NOT met'} ({met}/{len(rounds)})" if rounds else "-",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=3, help="phantoms in each of the tune and report sets")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of the node's work per report phantom")
    parser.add_argument("--loop-repeat", type=int, default=5, help="reports per row through Orthanc (0: none)")
    parser.add_argument("--medsam-repeat", type=int, default=2, help="MedSAM rounds per row, each way (0: none)")
    parser.add_argument("--quiet", type=float, default=1.0, help="the node's quiet period in the loop, seconds")
    args = parser.parse_args()
    started, load = time.monotonic(), os.getloadavg()[0]
    console = Console() if sys.stdout.isatty() else Console(width=220)
    lite = [Row("LiteMedSAM", n) for n in BOX_COUNTS]
    medsam = [Row("MedSAM shape, random weights", n) for n in BOX_COUNTS] if args.medsam_repeat else []
    with tempfile.TemporaryDirectory(prefix="samie-bench-prompted-", dir=REPO / "bench") as folder:
        tmp = Path(folder)
        settings = engine_settings({"kind": "litemedsam"})
        runtime = settings.engine.runtime
        engine = open_engine(settings)
        tune = tuned_margin(tmp, args.phantoms, engine, load_templates(), settings)
        margin = max(tune, key=lambda m: tune[m])
        node_work(tmp, lite, range(200, 200 + args.phantoms), args.repeat, margin, engine, settings)
        engine.close()
        console.print("tune set, mean Dice by margin: " + ", ".join(f"{m:g} px {d:.4f}" for m, d in tune.items()))
        if args.loop_repeat:
            through_pacs(tmp / "loop-litemedsam", args.quiet, {"kind": "litemedsam"}, lite, args.loop_repeat, margin)
        if medsam:
            segmenter = random_vit_b(tmp / "medsam_vit_b.pth")
            settings = engine_settings(segmenter)
            engine = open_engine(settings)
            node_work(tmp, medsam, [200], args.medsam_repeat, margin, engine, settings)
            engine.close()
            for row in medsam:
                row.dices.clear()  # random weights: the masks mean nothing
            through_pacs(tmp / "loop-medsam", args.quiet, segmenter, medsam, args.medsam_repeat, margin)
    title = (
        f"prompted path, 240 x 320 ultrasound, margin {margin:g} px (tuned); LiteMedSAM on {runtime}, "
        f"MedSAM on torch; {platform.machine()}, {torch.get_num_threads()} threads"
    )
    console.print(table([*lite, *medsam], args.quiet, title))
    console.print(
        f"quiet period {args.quiet:g} s (node polls every {NODE_POLL_S:g} s, the bench reads Orthanc every "
        f"{PACS_POLL_S:g} s); reports stored over STOW-RS, forwarded by the Lua rule over C-STORE; "
        f"load average {load:.1f} at the start, {time.monotonic() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
