"""End-to-end latency: from the last C-STORE of a study (dcmtk ``storescu``) to its SEG and SR stored in
Orthanc, through ``samie-node serve``.

Run::

    .venv/bin/python bench/e2e.py [--ct-slices 100] [--size 512] [--quiet 2] [--repeat 1]

Studies: a 1-image ultrasound and a CT series of ``--ct-slices`` slices (and, with ``--scaling``, CT
series of 10/25/50 slices to show how cost grows with the number of images). The table separates the
quiet period (the node waits that long after the last instance before it starts) from the work after
it, and reports the node's peak resident memory per study. Results also go to bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.testing.orthanc import ORTHANC_BINARY, write_orthanc_config  # noqa: E402
from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import ct_series, ultrasound_image, write_datasets  # noqa: E402


def rest(port: int, method: str, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def results_in_orthanc(http_port: int, study_uid: str) -> bool:
    """True once the study holds a SEG series and an SR series (series Modality; Orthanc before API
    version 20 ignores ``RequestedTags`` in ``/tools/find``, so the SOP Class is not asked for)."""
    found = rest(
        http_port,
        "POST",
        "/tools/find",
        json.dumps({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode(),
    )
    modalities = {item.get("MainDicomTags", {}).get("Modality") for item in found}
    return {"SEG", "SR"} <= modalities


def rss_peak_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--quiet", type=float, default=2.0, help="the node's quiet period, seconds")
    parser.add_argument("--scaling", action="store_true", help="also CT series of 10, 25 and 50 slices")
    args = parser.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu not found: install Debian package dcmtk (make peers)")
    console = Console() if sys.stdout.isatty() else Console(width=160)  # whole table in a log
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="samie-e2e-", dir=REPO / "bench") as tmp:
        root = Path(tmp)
        http_port, dicom_port, node_port = free_port(), free_port(), free_port()
        orthanc_config = write_orthanc_config(root, http_port, dicom_port)
        (root / "node.toml").write_text(
            f'[node]\nhost = "127.0.0.1"\nport = {node_port}\ndata_dir = "{root / "data"}"\n'
            f"[limits]\ndisk_floor_bytes = 0\n[study]\nquiet_period_s = {args.quiet}\npoll_interval_s = 0.1\n"
            "[http]\nenabled = false\n"
            f'[[send.destinations]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {dicom_port}\n'
        )
        orthanc = subprocess.Popen(
            [ORTHANC_BINARY, str(orthanc_config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        node = subprocess.Popen(
            [sys.executable, "-m", "samie_node", "serve", "--config", str(root / "node.toml")],
            stdout=(root / "node.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(http_port)
            wait_for_port(node_port)
            studies: list[tuple[str, list[Any]]] = [("US, 1 image", [ultrasound_image()[0]])]
            sizes = ([10, 25, 50] if args.scaling else []) + [args.ct_slices]
            for slices in sizes:
                studies.append((f"CT, {slices} slices", ct_series(slices, args.size, args.size, seed=slices)[0]))
            for name, datasets in studies:
                folder = root / name.replace(" ", "_").replace(",", "")
                write_datasets(datasets, folder)
                study_uid = str(datasets[0].StudyInstanceUID)
                subprocess.run(
                    [storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node_port), "+sd", str(folder)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                last_store = time.monotonic()
                while not results_in_orthanc(http_port, study_uid):
                    if node.poll() is not None:
                        raise SystemExit("node exited: see " + str(root / "node.log"))
                    time.sleep(0.1)
                total = time.monotonic() - last_store
                rows.append(
                    {
                        "study": name,
                        "images": len(datasets),
                        "total_s": total,
                        "after_quiet_s": total - args.quiet,
                        "per_image_s": (total - args.quiet) / len(datasets),
                        "node_peak_rss_mb": rss_peak_kb(node.pid) / 1024,
                    }
                )
                console.print(f"{name}: {total:.1f} s")
        finally:
            node.terminate()
            orthanc.terminate()
            node.wait(30)
            orthanc.wait(30)
    table = Table(title=f"End to end: last C-STORE -> SEG and SR in Orthanc (quiet period {args.quiet:.0f} s)")
    for column in ("study", "images", "total s", "after quiet s", "s per image", "node peak RSS MB"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["study"],
            str(r["images"]),
            f"{r['total_s']:.1f}",
            f"{r['after_quiet_s']:.1f}",
            f"{r['per_image_s']:.2f}",
            f"{r['node_peak_rss_mb']:.0f}",
        )
    console.print(table)
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}"
    console.print(f"machine: {machine}; peak RSS is the process high-water mark so far (it includes earlier rows)")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "e2e.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
