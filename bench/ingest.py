"""Ingest benchmark: dcmtk ``storescu`` sending one generated CT study to four receivers in one run.

Receivers, each on loopback, each measured with the same sender and files:

(a) samie-node ``serve`` (fsync'd durable spool + SQLite index),
(b) pynetdicom's bundled ``storescp`` app (writes files, no fsync),
(c) Orthanc (Debian package, default storage),
(d) a pynetdicom accept-and-discard receiver with TCP_NODELAY (the ceiling of a receiver on pynetdicom's
    association threads; samie-node serves associations in its own single thread each, see listener.py).

Run::

    .venv/bin/python bench/ingest.py [--slices 200] [--size 512] [--senders 4] [--repeat 3]

It prints instances/s and MB/s for one sender and for ``--senders`` concurrent senders (each with its own
copy of the study), and the ratios the targets are stated in. Results also go to
``bench/results/ingest.json``.

Repeats are interleaved (round 1 runs every receiver, then round 2, ...), so load from other processes on a
shared machine hits every receiver alike; the table gives the best run of each receiver (load only ever
slows a run down) and the median beside it. Each run also records how much CPU other processes on the
machine used while it ran ("other CPU", a share of all cores; Linux only), so a number taken under load
can be recognised as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import ct_series, write_datasets  # noqa: E402

DISCARD_SCP = r"""
import socket, sys
from pynetdicom import AE, evt, _config
from pynetdicom.presentation import AllStoragePresentationContexts
_config.LOG_HANDLER_LEVEL = "none"
def nodelay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ae = AE(ae_title="DISCARD")
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.maximum_associations = 32
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True,
                evt_handlers=[(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_C_STORE, lambda e: 0x0000)])
"""


@contextlib.contextmanager
def process(args: list[str], port: int, cwd: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    log = (cwd / "receiver.log").open("ab")
    proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=log, env={**os.environ, **(env or {})})
    try:
        wait_for_port(port, 120)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def samie_node(work: Path, port: int) -> Iterator[str]:
    config = work / "samie.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
        "[limits]\ndisk_floor_bytes = 0\n[study]\nquiet_period_s = 3600\n[http]\nenabled = false\n",
        encoding="utf-8",
    )
    with process([sys.executable, "-m", "samie_node", "serve", "--config", str(config)], port, work):
        yield "SAMIE_NODE"


@contextlib.contextmanager
def pynetdicom_storescp(work: Path, port: int) -> Iterator[str]:
    out = work / "out"
    out.mkdir()
    with process([sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(out)], port, work):
        yield "STORESCP"


@contextlib.contextmanager
def orthanc(work: Path, port: int) -> Iterator[str]:
    storage = work / "orthanc"
    http = free_port()
    config = work / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": http,
                "DicomPort": port,
                "DicomAet": "ORTHANC",
                "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False,
                "Plugins": [],
            }
        )
    )
    with process(["/usr/sbin/Orthanc", str(config)], port, work):
        wait_for_port(http)
        yield "ORTHANC"


@contextlib.contextmanager
def discard(work: Path, port: int) -> Iterator[str]:
    with process([sys.executable, "-c", DISCARD_SCP, str(port)], port, work):
        yield "DISCARD"


RECEIVERS = {
    "samie-node": samie_node,
    "pynetdicom storescp": pynetdicom_storescp,
    "Orthanc": orthanc,
    "accept-and-discard": discard,
}


def _cpu_by_process() -> dict[int, tuple[int, float]]:
    """CPU seconds used so far by every user-space process, as {pid: (parent pid, seconds)}."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[6]) & 0x00200000:  # PF_KTHREAD: kernel threads do our I/O too; not counted
            continue
        usage[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return usage


def _descendants(usage: dict[int, tuple[int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in usage.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def other_cpu_share(before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]], wall: float) -> float:
    """Share of all cores used by processes outside this benchmark between two snapshots."""
    ours = _descendants(before, os.getpid()) | _descendants(after, os.getpid())
    used = sum(seconds - before[pid][1] for pid, (_, seconds) in after.items() if pid in before and pid not in ours)
    return used / (wall * (os.cpu_count() or 1))


def send(ae_title: str, port: int, folders: list[Path]) -> tuple[float, float | None]:
    """Run one storescu per folder concurrently.

    Returns the wall time until all finished and the share of the machine's CPU that other processes used
    meanwhile (None where ``/proc`` is not there to tell).
    """
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu not found: install Debian package dcmtk (make peers)")
    before = _cpu_by_process() if Path("/proc/stat").exists() else None
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [storescu, "-aec", ae_title, "127.0.0.1", str(port), "+sd", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    wall = time.perf_counter() - started
    other = other_cpu_share(before, _cpu_by_process(), wall) if before is not None else None
    return wall, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds; the best and the median run are reported"
    )
    args = parser.parse_args()

    # Piped output (a log, a report) gets the whole table rather than 80 columns of it.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in RECEIVERS}
    with tempfile.TemporaryDirectory(prefix="samie-bench-", dir=REPO / "bench") as tmp:
        root = Path(tmp)
        folders = []
        for sender in range(max(args.senders, 1)):
            datasets, _ = ct_series(slices=args.slices, rows=args.size, columns=args.size, seed=100 + sender)
            folders.append(root / f"study{sender}")
            write_datasets(datasets, folders[-1])
        megabytes = sum(p.stat().st_size for p in folders[0].iterdir()) / 1e6
        for attempt in range(args.repeat):
            for name, factory in RECEIVERS.items():
                work = root / f"{name.replace(' ', '_')}-{attempt}"
                work.mkdir()
                port = free_port()
                with factory(work, port) as ae_title:
                    one, other_one = send(ae_title, port, folders[:1])
                    many, other_many = send(ae_title, port, folders[: args.senders])
                shutil.rmtree(work, ignore_errors=True)
                runs[name].append(
                    {
                        "one_sender_instances_per_s": args.slices / one,
                        "one_sender_other_cpu": other_one,
                        "concurrent_instances_per_s": args.slices * args.senders / many,
                        "concurrent_other_cpu": other_many,
                    }
                )
                console.print(
                    f"round {attempt + 1} {name}: {args.slices / one:.0f} instances/s one sender"
                    f" ({_share(other_one)} other CPU), {args.slices * args.senders / many:.0f} with"
                    f" {args.senders} ({_share(other_many)} other CPU)"
                )

    results: dict[str, dict[str, float]] = {}
    for name, name_runs in runs.items():
        one_rates = [float(r["one_sender_instances_per_s"] or 0.0) for r in name_runs]
        many_rates = [float(r["concurrent_instances_per_s"] or 0.0) for r in name_runs]
        others = [float(v) for r in name_runs for k, v in r.items() if k.endswith("other_cpu") and v is not None]
        results[name] = {
            "one_sender_instances_per_s": max(one_rates),
            "one_sender_median_instances_per_s": statistics.median(one_rates),
            "one_sender_mb_per_s": max(one_rates) * megabytes / args.slices,
            "concurrent_instances_per_s": max(many_rates),
            "concurrent_median_instances_per_s": statistics.median(many_rates),
            "concurrent_mb_per_s": max(many_rates) * megabytes / args.slices,
            "max_other_cpu": max(others, default=0.0),
        }

    ours = results["samie-node"]
    table = Table(
        title=f"Ingest: {args.slices} CT slices {args.size}x{args.size} 16-bit ({megabytes:.0f} MB), "
        f"dcmtk storescu over loopback; best of {args.repeat} interleaved rounds (median in brackets); "
        f"{args.senders} concurrent senders in the right half"
    )
    for column in (
        "receiver",
        "inst/s",
        "MB/s",
        "samie-node is",
        f"inst/s x{args.senders}",
        f"MB/s x{args.senders}",
        "samie-node is",
        "other CPU (max)",
    ):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['one_sender_instances_per_s']:.0f} ({r['one_sender_median_instances_per_s']:.0f})",
            f"{r['one_sender_mb_per_s']:.1f}",
            f"{ours['one_sender_instances_per_s'] / r['one_sender_instances_per_s']:.2f}x",
            f"{r['concurrent_instances_per_s']:.0f} ({r['concurrent_median_instances_per_s']:.0f})",
            f"{r['concurrent_mb_per_s']:.1f}",
            f"{ours['concurrent_instances_per_s'] / r['concurrent_instances_per_s']:.2f}x",
            _share(r["max_other_cpu"]),
        )
    console.print(table)
    for label, key in (("one sender", "one_sender"), (f"{args.senders} senders", "concurrent")):
        for peer, target in (("pynetdicom storescp", 2.0), ("Orthanc", 5.0), ("accept-and-discard", 0.65)):
            best = ours[f"{key}_instances_per_s"] / results[peer][f"{key}_instances_per_s"]
            median = ours[f"{key}_median_instances_per_s"] / results[peer][f"{key}_median_instances_per_s"]
            verdict = "met" if best >= target else "NOT met"
            console.print(
                f"{label}: samie-node / {peer} >= {target:g}: best {best:.2f} {verdict}"
                f" (medians {median:.2f}{'' if median >= target else ', below'})"
            )
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"
    console.print(f"machine: {machine}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(
        json.dumps({"machine": machine, "args": vars(args), "results": results, "runs": runs}, indent=2)
    )


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


if __name__ == "__main__":
    main()
