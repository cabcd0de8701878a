"""Scale-out and head-of-line blocking: a CT and a burst of 1-image studies through ``samie-node serve``,
with the local engine and with Ray workers, in one run.

Run::

    .venv/bin/python bench/scale.py [--ct-slices 50] [--small 10] [--size 256] [--quiet 2]

Load: a CT series of ``--ct-slices`` slices, then, one second after it, ``--small`` 1-image ultrasound
studies, sent by dcmtk ``storescu`` to a fresh node per configuration:

- ``local, whole study, one at a time``: the local engine with chunks as large as a study and one study in
  flight, which is how the node worked before the scheduler (the small studies wait for the CT);
- ``local``: the local engine, chunks of ``chunk_images``, smallest study first;
- ``ray, N workers``: Ray actors on a Ray instance the node starts on this machine (``ray_address = ""``),
  one CPU each; the last configuration with chunks of one image (a small study then waits for at most one
  image per worker instead of two).

Latency is from a study's quiet period's end (its last C-STORE plus the quiet period) to the node
recording it processed (SEG and SR written and queued), read from the node's audit trail. Throughput is
all images over the time from the CT's quiet period's end to the last study processed.

Each configuration also runs the burst of small studies alone, without the CT, on a fresh node: its p95 is
what the burst costs by itself on this machine (the tenth study waits for the nine before it, whatever
the scheduler), and the difference between the two p95s is what the CT adds, the head-of-line blocking the
scheduler is meant to remove. Results also go to bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import ct_series, ultrasound_image, write_datasets  # noqa: E402

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("local, whole study, one at a time", {"backend": "local", "chunk_images": 1024, "max_studies_in_flight": 1}),
    ("local", {"backend": "local"}),
    ("ray, 1 worker", {"backend": "ray", "workers": 1}),
    ("ray, 2 workers", {"backend": "ray", "workers": 2}),
    ("ray, 2 workers, chunks of 1", {"backend": "ray", "workers": 2, "chunk_images": 1}),
]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of ten values is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def store(storescu: str, port: int, folder: Path) -> float:
    subprocess.run(
        [storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(port), "+sd", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.time()


def run_config(
    name: str, engine: dict[str, Any], studies: list[tuple[str, Path, int]], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One node, one load; returns latencies and throughput."""
    storescu = shutil.which("storescu") or "storescu"
    port = free_port()
    data = work / name.replace(" ", "_").replace(",", "")
    engine = {"device": "cpu", "cpus_per_worker": 1.0, "ray_object_store_mb": 200, **engine}
    lines = [f'[node]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\nfsync = false']
    lines.append(f"[study]\nquiet_period_s = {args.quiet}\npoll_interval_s = 0.1\n[limits]\ndisk_floor_bytes = 0")
    lines.append("[engine]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in engine.items()))
    config = work / f"{data.name}.toml"
    config.write_text("\n".join(lines) + "\n")
    node = subprocess.Popen(
        [sys.executable, "-m", "samie_node", "serve", "--config", str(config)],
        stdout=(work / f"{data.name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 120)
        if engine["backend"] == "ray":  # workers up (models loaded) before the clock starts
            while "engine ray: available" not in (work / f"{data.name}.log").read_text(errors="replace"):
                time.sleep(0.5)
            while (work / f"{data.name}.log").read_text(errors="replace").count("engine worker ready") < engine[
                "workers"
            ]:
                time.sleep(0.5)
        sent: dict[str, float] = {}
        first_uid, first_folder, _ = studies[0]
        sent[first_uid] = store(storescu, port, first_folder)
        if studies[0][2] > 1:  # the burst comes 1 s after the CT
            time.sleep(max(0.0, sent[first_uid] + 1.0 - time.time()))
        for uid, folder, _ in studies[1:]:
            sent[uid] = store(storescu, port, folder)
        done = wait_done(data / "audit.jsonl", set(sent), node)
    finally:
        node.terminate()
        node.wait(60)
    latency = {uid: done[uid] - (sent[uid] + args.quiet) for uid in sent}
    with_ct = studies[0][2] > 1
    small = [latency[uid] for uid, _, n in studies if n == 1]
    images = sum(n for _, _, n in studies)
    span = max(done.values()) - (sent[first_uid] + args.quiet)
    return {
        "config": name,
        "small_p50_s": statistics.median(small),
        "small_p95_s": percentile(small, 0.95),
        "ct_s": latency[first_uid] if with_ct else None,
        "images": images,
        "images_per_s": images / span,
    }


def wait_done(audit: Path, uids: set[str], node: subprocess.Popen[bytes]) -> dict[str, float]:
    """The time each study was recorded processed (``study_processed`` in the audit trail)."""
    done: dict[str, float] = {}
    while len(done) < len(uids):
        if node.poll() is not None:
            raise SystemExit("node exited: see its log in the work folder")
        time.sleep(0.2)
        if not audit.exists():
            continue
        for line in audit.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "study_processed" and event["study_instance_uid"] in uids:
                if event["outcome"] != "done":
                    raise SystemExit(f"study failed: {event}")
                done.setdefault(event["study_instance_uid"], float(event["time"]))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-slices", type=int, default=50)
    parser.add_argument("--small", type=int, default=10, help="1-image studies sent 1 s after the CT")
    parser.add_argument("--size", type=int, default=256, help="CT slice rows and columns")
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's quiet period, seconds")
    parser.add_argument("--configs", default=",".join(str(i) for i in range(len(CONFIGS))), help="e.g. 1,3")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("storescu not found: install Debian package dcmtk (make peers)")
    console = Console() if sys.stdout.isatty() else Console(width=160)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="samie-scale-") as tmp:
        work = Path(tmp)
        ct = ct_series(args.ct_slices, args.size, args.size, seed=50)[0]
        write_datasets(ct, work / "ct")
        studies = [(str(ct[0].StudyInstanceUID), work / "ct", len(ct))]
        for index in range(args.small):
            dataset = ultrasound_image(rows=240, columns=320, seed=100 + index)[0]
            write_datasets([dataset], work / f"us{index}")
            studies.append((str(dataset.StudyInstanceUID), work / f"us{index}", 1))
        for index in (int(i) for i in args.configs.split(",")):
            name, engine = CONFIGS[index]
            rows.append(run_config(name, engine, studies, args, work))
            rows[-1]["alone"] = run_config(name + " alone", engine, studies[1:], args, work)
            console.print(f"{name}: {rows[-1]}")
    table = Table(
        title=f"Mixed load: a {args.ct_slices}-slice CT, then {args.small} 1-image studies 1 s later "
        f"(latency after the {args.quiet:.0f} s quiet period)"
    )
    columns = ("engine", "small p50 s", "small p95 s", "small p95 alone s", "added by the CT s", "CT s")
    for column in (*columns, "images/s", "vs 1 Ray worker"):
        table.add_column(column, justify="right")
    one = next((r["images_per_s"] for r in rows if r["config"] == "ray, 1 worker"), None)
    for r in rows:
        workers = 2 if r["config"].startswith("ray, 2 workers") else 1
        efficiency = f"{r['images_per_s'] / (workers * one):.0%}" if one and r["config"].startswith("ray") else ""
        table.add_row(
            r["config"],
            f"{r['small_p50_s']:.1f}",
            f"{r['small_p95_s']:.1f}",
            f"{r['alone']['small_p95_s']:.1f}",
            f"{r['small_p95_s'] - r['alone']['small_p95_s']:+.1f}",
            f"{r['ct_s']:.1f}",
            f"{r['images_per_s']:.2f}",
            efficiency,
        )
    console.print(table)
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}"
    console.print(
        f"machine: {machine}; 'vs 1 Ray worker' is scaling efficiency: throughput / (workers x 1 worker's); "
        f"'alone': the {args.small} small studies without the CT, same engine, fresh node; target: what the CT "
        "adds to the small studies' p95 at most 5 s"
    )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
