"""``samie-node demo``: the whole product on loopback, for a newcomer, with no GPU and no network.

It starts a small PACS (the Storage SCP of :mod:`samie_node.testing.pacs`, which keeps what it
receives), starts the node with that PACS as its destination, sends three generated studies (a CT
series, an ultrasound image and an RGB photograph), waits for each study's SEG and SR to come back, and
prints a table per study with the overlay PNGs the node wrote.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian
from rich.console import Console
from rich.table import Table

from samie_node.config import Peer, Settings, load_settings
from samie_node.net.receive import configure_pynetdicom
from samie_node.net.send import associate
from samie_node.runtime import build_node
from samie_node.summary import StudySummary
from samie_node.testing.pacs import StoreSCP
from samie_node.testing.ports import free_port
from samie_node.testing.sample_studies import ct_series, rgb_photograph, ultrasound_image


def _send(datasets: list[Dataset], node_port: int) -> float:
    """C-STORE datasets to the node as the PACS would; returns the time of the last response."""
    contexts = sorted({str(ds.SOPClassUID) for ds in datasets})
    with associate(
        _peer(node_port),
        [(uid, [ExplicitVRLittleEndian]) for uid in contexts],
        calling_ae_title="DEMO_PACS",
        timeout_s=30,
    ) as assoc:
        for dataset in datasets:
            assoc.send_c_store(dataset)
    return time.monotonic()


def _peer(port: int) -> Peer:
    return Peer(ae_title="SAMIE_NODE", host="127.0.0.1", port=port)


def demo_settings(work: Path, node_port: int, pacs_port: int, quiet_period_s: float) -> Settings:
    return load_settings(
        None,
        {
            "node": {"host": "127.0.0.1", "port": node_port, "data_dir": str(work / "node")},
            "limits": {"disk_floor_bytes": 0},
            "study": {"quiet_period_s": quiet_period_s, "poll_interval_s": 0.2},
            "http": {"enabled": False},  # a short run on loopback; 8765 may be another node's
            "send": {"destinations": [{"ae_title": "DEMO_PACS", "host": "127.0.0.1", "port": pacs_port}]},
        },
    )


def run_demo(
    console: Console,
    *,
    work_dir: Path | None = None,
    quiet_period_s: float = 2.0,
    timeout_s: float = 600.0,
    log: Callable[[str], None] | None = None,
) -> int:
    """Run the demo; returns 0 when every study came back with its SEG and SR."""
    configure_pynetdicom()
    work = work_dir or Path(tempfile.mkdtemp(prefix="samie-demo-"))
    say = log or console.print
    pacs = StoreSCP(free_port(), "DEMO_PACS", folder=work / "pacs").start()
    node_port = free_port()
    settings = demo_settings(work, node_port, pacs.port, quiet_period_s)
    say(f"[bold]samie-node demo[/bold] in {work}")
    say("loading the models (LiteMedSAM, embedded weights) ...")
    node = build_node(settings)
    node.start()
    ct, _ = ct_series(slices=12, rows=256, columns=256, seed=5)
    us, _ = ultrasound_image()
    photo, _ = rgb_photograph()
    studies = {"CT series": ct, "ultrasound": [us], "RGB photograph": [photo]}
    sent_at: dict[str, float] = {}
    try:
        for name, datasets in studies.items():
            sent_at[name] = _send(datasets, node_port)
            say(f"sent {name}: {len(datasets)} instance(s) to SAMIE_NODE@127.0.0.1:{node_port}")
        deadline = time.monotonic() + timeout_s
        pending = set(studies)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if pacs.returned(str(studies[name][0].StudyInstanceUID), Comprehensive3DSRStorage) is not None:
                    pending.discard(name)
                    say(f"results back for {name}")
            time.sleep(0.2)
        table = Table(title="samie-node demo: results returned to the PACS")
        for column in ("study", "modality", "images", "regions", "class (probability)", "latency after quiet"):
            table.add_column(column)
        previews: list[Path] = []
        for name, datasets in studies.items():
            uid = str(datasets[0].StudyInstanceUID)
            record = node.spool.study(uid)
            summary = StudySummary.from_dict(record.result) if record is not None else None
            returned = pacs.returned(uid, Comprehensive3DSRStorage)
            latency = (
                f"{max(0.0, returned - sent_at[name] - quiet_period_s):.1f} s (+{quiet_period_s:.0f} s quiet)"
                if returned is not None
                else "NOT RETURNED"
            )
            table.add_row(
                name,
                str(datasets[0].Modality),
                str(summary.images if summary else 0),
                str(summary.regions if summary else 0),
                summary.classification_text() if summary else "-",
                latency,
            )
            previews.extend(sorted((node.spool.outbox_dir / uid / "previews").glob("*.png"))[:2])
        console.print(table)
        console.print("overlay previews (not for diagnostic use):")
        for path in previews:
            console.print(f"  {path}", soft_wrap=True, highlight=False)
        console.print(f"results as the PACS received them: {pacs.folder}", soft_wrap=True, highlight=False)
        return 0 if not pending else 1
    finally:
        node.stop()
        pacs.stop()
