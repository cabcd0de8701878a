"""Soak run: N minutes of mixed studies from several senders, with periodic faults, then a full drain.

Run::

    .venv/bin/python bench/soak.py [--minutes 10] [--senders 3] [--fault-every 60] [--faults kill,pacs] [--pause 10]

Studies (a 1-image ultrasound, a 3-slice CT, an RGB photograph, each with fresh UIDs) are sent by
``--senders`` threads over pynetdicom associations. Every ``--fault-every`` seconds a fault is injected,
in turn from ``--faults``: ``kill`` (kill -9 the node and restart it), ``pacs`` (the destination goes down
for 15 s). After the run the node drains (every study processed, every result delivered) and the script
prints: instances acknowledged, instances indexed, studies processed, results delivered, lost (must be
0), and the node's memory and open file descriptors at start and end. With ``kill`` faults the end
figures belong to the last restarted process; use ``--faults pacs`` to watch one process for leaks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.config import Peer  # noqa: E402
from samie_node.net.send import associate  # noqa: E402
from samie_node.testing.ports import free_port, wait_for_port  # noqa: E402
from samie_node.testing.sample_studies import ct_series, rgb_photograph, ultrasound_image  # noqa: E402


class Pacs:
    """The destination: a pynetdicom Storage SCP that records SOP Instance UIDs; can go down and up."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.uids: set[str] = set()
        self.lock = threading.Lock()
        self.server: Any = None

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.uids.add(str(event.request.AffectedSOPInstanceUID))
        return 0

    def up(self) -> None:
        ae = AE(ae_title="SOAKPACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class Node:
    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config, self.log, self.port = config, log, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samie_node", "serve", "--config", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def status(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "samie_node", "status", "--config", str(self.config), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return list(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--fault-every", type=float, default=60.0)
    parser.add_argument("--faults", default="kill,pacs")
    parser.add_argument(
        "--pause",
        type=float,
        default=10.0,
        help="mean seconds each sender waits between studies (default 10: with 3 senders about what a 2-core "
        "CPU processes, so the run measures a steady state; lower it to build a backlog)",
    )
    parser.add_argument("--drain-minutes", type=float, default=30.0)
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    console = Console() if sys.stdout.isatty() else Console(width=160)  # whole table in a log
    acknowledged: set[str] = set()
    studies: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="samie-soak-", dir=REPO / "bench") as tmp:
        root = Path(tmp)
        pacs = Pacs(free_port())
        pacs.up()
        port = free_port()
        config = root / "node.toml"
        config.write_text(
            f'[node]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{root / "data"}"\n'
            "[limits]\ndisk_floor_bytes = 0\n[study]\nquiet_period_s = 2.0\npoll_interval_s = 0.2\n"
            "[http]\nenabled = false\n"
            "[send]\nbackoff_initial_s = 1.0\nbackoff_max_s = 10.0\nmax_attempts = 1000\n"
            f'[[send.destinations]]\nae_title = "SOAKPACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
        )
        node = Node(config, root / "node.log", port)
        node.start()
        time.sleep(5)
        start_rss, start_fds = node.rss_mb(), node.fds()

        def sender(index: int) -> None:
            rng = random.Random(index)
            seed = index * 100000
            while not stop.is_set():
                seed += 1
                kind = rng.choice(["us", "ct", "photo"])
                datasets = (
                    ct_series(3, 96, 96, seed=seed)[0]
                    if kind == "ct"
                    else [
                        ultrasound_image(96, 128, seed=seed)[0]
                        if kind == "us"
                        else rgb_photograph(96, 96, seed=seed)[0]
                    ]
                )
                try:
                    with associate(
                        Peer(ae_title="SAMIE_NODE", host="127.0.0.1", port=port),
                        [(str(datasets[0].SOPClassUID), ["1.2.840.10008.1.2.1"])],
                        calling_ae_title=f"SOAK{index}",
                        timeout_s=30,
                    ) as assoc:
                        for ds in datasets:
                            status = assoc.send_c_store(ds)
                            if status and status.get("Status") == 0:
                                with lock:
                                    acknowledged.add(str(ds.SOPInstanceUID))
                                    studies.add(str(ds.StudyInstanceUID))
                except Exception:  # the node may be down (a fault): the sender retries with new studies
                    time.sleep(1)
                time.sleep(rng.uniform(0.5, 1.5) * args.pause)

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(args.senders)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + args.minutes * 60
        next_fault = time.monotonic() + args.fault_every
        fault_index = 0
        injected: list[str] = []
        while time.monotonic() < deadline:
            time.sleep(1)
            if faults and time.monotonic() >= next_fault:
                fault = faults[fault_index % len(faults)]
                fault_index += 1
                next_fault = time.monotonic() + args.fault_every
                injected.append(fault)
                console.print(f"fault: {fault}")
                if fault == "kill":
                    node.kill9()
                    node.start()
                elif fault == "pacs":
                    pacs.down()
                    threading.Timer(15, pacs.up).start()
        stop.set()
        for thread in threads:
            thread.join(60)
        if pacs.server is None:
            pacs.up()
        console.print("draining ...")
        drain_deadline = time.monotonic() + args.drain_minutes * 60
        status: list[dict[str, Any]] = []
        while time.monotonic() < drain_deadline:
            status = node.status()
            outputs = [o for s in status for o in s["outputs"]]
            if all(s["state"] in ("done", "failed") for s in status) and all(o["state"] == "sent" for o in outputs):
                break
            time.sleep(2)
        end_rss, end_fds = node.rss_mb(), node.fds()
        node.stop()
        pacs.down()
    indexed = {s["study_instance_uid"]: s for s in status}
    instances_indexed = sum(s["instances"] for s in status)
    outputs = [o for s in status for o in s["outputs"]]
    delivered = {o["sop_instance_uid"] for o in outputs if o["state"] == "sent"} & pacs.uids
    lost_instances = len(acknowledged) - instances_indexed
    lost_studies = len([u for u in studies if indexed.get(u, {}).get("state") != "done"])
    lost_results = len({o["sop_instance_uid"] for o in outputs} - pacs.uids)
    table = Table(
        title=f"Soak: {args.minutes:g} min, {args.senders} senders, faults every {args.fault_every:g} s "
        f"({', '.join(injected) or 'none'})"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in [
        ("instances acknowledged", len(acknowledged)),
        ("instances indexed", instances_indexed),
        ("studies sent", len(studies)),
        ("studies processed (done)", sum(1 for s in status if s["state"] == "done")),
        ("studies failed", sum(1 for s in status if s["state"] == "failed")),
        ("results delivered", len(delivered)),
        ("lost (instances + studies + results)", lost_instances + lost_studies + lost_results),
        ("node RSS MB start / end", f"{start_rss:.0f} / {end_rss:.0f}"),
        ("node open fds start / end", f"{start_fds} / {end_fds}"),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "lost": lost_instances + lost_studies + lost_results,
                "acknowledged": len(acknowledged),
                "delivered": len(delivered),
            }
        )
    )
    if lost_instances + lost_studies + lost_results:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
