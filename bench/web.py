"""Does the web face slow ingest? dcmtk ``storescu`` into ``samie-node serve`` with and without a scraper.

Two nodes run side by side on loopback, each a ``samie-node serve`` process with its models loaded and
a quiet period long enough that nothing is processed: one with ``[http] enabled = false``, one with the
HTTP server. Each run sends the same generated CT study ``--sends`` times in a row (one ``storescu`` at a
time; the instances replace themselves), so that a run lasts several scrapes. Each round makes three
runs, in turn:

(a) to the node without HTTP,
(b) to the node with HTTP, nobody polling it,
(c) to the node with HTTP while a scraper GETs ``/metrics`` and the console's overview every second.

Rounds are interleaved so load from elsewhere hits every condition alike; the table gives the best run
of each (load only ever slows a run down) with the median beside it, and the scraper's request times.

Run::

    .venv/bin/python bench/web.py [--slices 200] [--size 512] [--sends 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import ct_series, write_datasets  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from ingest import send  # noqa: E402


@contextlib.contextmanager
def node(work: Path, http_port: int | None) -> Iterator[int]:
    """A ``samie-node serve`` process; yields its DICOM port."""
    work.mkdir(parents=True)
    port = free_port()
    http = f"[http]\nport = {http_port}\n" if http_port else "[http]\nenabled = false\n"
    config = work / "samie.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
        f"[limits]\ndisk_floor_bytes = 0\n[study]\nquiet_period_s = 3600\n{http}",
        encoding="utf-8",
    )
    log = (work / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "samie_node", "serve", "--config", str(config)], cwd=work, stdout=log, stderr=log
    )
    try:
        wait_for_port(port, 300, proc)
        if http_port:
            wait_for_port(http_port, 60, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(60)


class Scraper(threading.Thread):
    """GETs ``/metrics`` and ``/`` once a second until stopped; keeps each request's time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ms: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for path in ("/metrics", "/"):
                started = time.perf_counter()
                with urllib.request.urlopen(self.url + path, timeout=10) as response:
                    response.read()
                self.ms.append((time.perf_counter() - started) * 1000)
            self.stop.wait(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sends", type=int, default=10, help="sends of the study per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=160)
    conditions = ("no HTTP server", "HTTP server, idle", "HTTP server, scraped every second")
    rates: dict[str, list[float]] = {c: [] for c in conditions}
    scrape_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="samie-bench-web-", dir=REPO / "bench") as tmp:
        root = Path(tmp)
        datasets, _ = ct_series(slices=args.slices, rows=args.size, columns=args.size, seed=200)
        write_datasets(datasets, root / "study")
        http_port = free_port()
        with node(root / "plain", None) as plain_port, node(root / "web", http_port) as web_port:
            for attempt in range(args.repeat):
                for condition in conditions:
                    port = plain_port if condition == conditions[0] else web_port
                    scraper = Scraper(f"http://127.0.0.1:{http_port}") if condition == conditions[2] else None
                    if scraper is not None:
                        scraper.start()
                    wall = sum(send("SAMIE_NODE", port, [root / "study"])[0] for _ in range(args.sends))
                    if scraper is not None:
                        scraper.stop.set()
                        scraper.join()
                        scrape_ms.extend(scraper.ms)
                    rate = args.slices * args.sends / wall
                    rates[condition].append(rate)
                    console.print(f"round {attempt + 1} {condition}: {rate:.0f} instances/s over {wall:.1f} s")
    baseline = max(rates[conditions[0]])
    table = Table(
        title=f"Ingest with the web face: {args.slices} CT slices {args.size}x{args.size} sent {args.sends} times, "
        f"one storescu at a time; best of {args.repeat} interleaved rounds (median in brackets)"
    )
    for column in ("condition", "inst/s", "vs no HTTP server"):
        table.add_column(column, justify="right")
    for condition in conditions:
        best, median = max(rates[condition]), statistics.median(rates[condition])
        table.add_row(condition, f"{best:.0f} ({median:.0f})", f"{best / baseline:.2f}x")
    console.print(table)
    if scrape_ms:
        console.print(
            f"scraper: {len(scrape_ms)} requests (/metrics and /), median {statistics.median(scrape_ms):.1f} ms,"
            f" max {max(scrape_ms):.1f} ms"
        )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "web.json").write_text(json.dumps({"args": vars(args), "rates": rates, "scrape_ms": scrape_ms}, indent=2))


if __name__ == "__main__":
    main()
