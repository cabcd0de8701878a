"""The Ray engine backend on Ray's own multi-node test cluster: a head and two worker nodes on this machine.

The head has no CPUs, so the engine workers (one CPU each) land one per worker node, as on a site's GPU
machines. The node (``samie-node serve`` or ``process``) joins the cluster by address, as it would a real
one. One cluster serves the module (starting Ray costs seconds and hundreds of MB); the tests that stop
it or remove a node put it back as they found it. Ray binds this machine's own address (it turns a
loopback address given to ``ray.init`` into that one), so nothing leaves the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_checks import assert_dciodvfy_clean
from peers import NodeProcess, require_tool, running_node, running_orthanc, write_config
from ray.cluster_utils import Cluster

from samie_node.testing.ports import free_port
from samie_node.testing.sample_studies import ct_series, rgb_photograph, ultrasound_image, write_datasets

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MB = 1024 * 1024
#: The engine settings every Ray test shares (the local reference uses the same chunking).
CHUNK_IMAGES = 2


class RayTestCluster:
    """A head without CPUs and worker nodes of one CPU each, at a fixed port (stopped and started again
    under the same address)."""

    def __init__(self, workers: int = 2) -> None:
        self.port = free_port()
        self.workers = workers
        self.cluster: Cluster | None = None
        self.nodes: list[Any] = []
        self.address = ""

    def start(self) -> RayTestCluster:
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "gcs_server_port": self.port,
                "num_cpus": 0,
                "object_store_memory": 80 * MB,
                "include_dashboard": False,
            },
        )
        self.nodes = [self.add_worker() for _ in range(self.workers)]
        self.address = str(self.cluster.address)
        return self

    def add_worker(self) -> Any:
        assert self.cluster is not None
        node = self.cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
        self.cluster.wait_for_nodes()
        return node

    def remove_worker(self) -> None:
        assert self.cluster is not None
        self.cluster.remove_node(self.nodes.pop(0))

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayTestCluster]:
    cluster = RayTestCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def ray_engine(cluster: RayTestCluster, **extra: Any) -> dict[str, Any]:
    return {
        "device": "cpu",
        "backend": "ray",
        "ray_address": cluster.address,
        "workers": 2,
        "cpus_per_worker": 1.0,
        "chunk_images": CHUNK_IMAGES,
        "reconnect_interval_s": 1.0,
        **extra,
    }


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-slice CT, a 1-image ultrasound and a 1-image photograph, one study each, in one folder."""
    root = tmp_path_factory.mktemp("studies")
    ct, _ = ct_series(slices=4, rows=128, columns=128, seed=7)
    write_datasets(ct, root / "ct")
    write_datasets([ultrasound_image(rows=120, columns=160, seed=5)[0]], root / "us")
    write_datasets([rgb_photograph(rows=120, columns=120, seed=6)[0]], root / "photo")
    return root


def study_uids(folder: Path) -> list[str]:
    return sorted({str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in folder.rglob("*.dcm")})


def run_process(folder: Path, out: Path, config: Path, *flags: str) -> dict[str, Any]:
    """``samie-node process --json`` as an operator runs it."""
    command = [sys.executable, "-m", "samie_node", "process", str(folder), "--out", str(out), "-c", str(config)]
    done = subprocess.run([*command, "--json", *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def outputs_by_name(out: Path) -> dict[str, Path]:
    """SEG and SR files written by ``process``, by ``KIND-SOPInstanceUID`` (the UIDs are the identity)."""
    return {p.stem: p for p in out.rglob("*.dcm") if p.stem.startswith(("SEG-", "SR-"))}


@pytest.fixture(scope="module")
def local_outputs(studies: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The local engine's outputs for the same studies: the reference the Ray backend must match."""
    tmp = tmp_path_factory.mktemp("local")
    config = write_config(tmp / "local.toml", {"engine": {"device": "cpu", "chunk_images": CHUNK_IMAGES}})
    report = run_process(studies, tmp / "out", config)
    assert [s["state"] for s in report["studies"]] == ["done"] * 3
    return outputs_by_name(tmp / "out")


def assert_same_segmentation(ours: Path | bytes, reference: Path) -> None:
    """Same SOP Instance UID, same frames, same mask bits."""
    seg = pydicom.dcmread(ours if isinstance(ours, Path) else pydicom.filebase.DicomBytesIO(ours))
    expected = pydicom.dcmread(reference)
    assert seg.SOPInstanceUID == expected.SOPInstanceUID
    assert int(seg.NumberOfFrames) == int(expected.NumberOfFrames)
    assert seg.PixelData == expected.PixelData


def test_dcmtk_studies_come_back_to_orthanc_as_the_local_engine_makes_them(
    ray_cluster: RayTestCluster, studies: Path, local_outputs: dict[str, Path], tmp_path: Path
) -> None:
    storescu = require_tool("storescu")
    with running_orthanc(tmp_path / "pacs") as orthanc:
        destination = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
        with running_node(tmp_path, engine=ray_engine(ray_cluster), send={"destinations": [destination]}) as node:
            for folder in ("ct", "us", "photo"):
                files = sorted(str(p) for p in (studies / folder).glob("*.dcm"))
                subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), *files], check=True)
            for uid in study_uids(studies):
                study = node.wait_for_study(uid, {"done", "failed"}, timeout=600)
                assert study["state"] == "done", study
            wait_until_sent(node, expected=6)
            assert "engine worker ready" in node.log()
        stored: dict[str, bytes] = {}
        for uid in study_uids(studies):
            for instance in orthanc.study_instances(uid):
                data = orthanc.instance_file(instance["ID"])
                header = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
                if header.Modality in ("SEG", "SR"):
                    stored[f"{header.Modality}-{header.SOPInstanceUID}"] = data
    # The same objects (SOP Instance UIDs) as the local engine, and the same masks in every SEG.
    assert sorted(stored) == sorted(local_outputs)
    for name, data in stored.items():
        (tmp_path / f"{name}.dcm").write_bytes(data)
        assert_dciodvfy_clean(tmp_path / f"{name}.dcm")
        if name.startswith("SEG-"):
            assert_same_segmentation(data, local_outputs[name])


def wait_until_sent(node: NodeProcess, expected: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outputs = [o for s in node.status() for o in s["outputs"]]
        if len(outputs) >= expected and all(o["state"] == "sent" for o in outputs):
            return
        time.sleep(0.5)
    raise TimeoutError(f"outputs not all sent: {node.status()}")


def send_ct_until_a_chunk_is_done(node: NodeProcess, tmp_path: Path, slices: int, seed: int) -> list[Any]:
    """Send a CT series with storescu and wait until the node logs its first chunk back from the cluster."""
    datasets, _ = ct_series(slices=slices, rows=128, columns=128, seed=seed)
    paths = write_datasets(datasets, tmp_path / "ct")
    storescu = require_tool("storescu")
    subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), *map(str, paths)], check=True)
    deadline = time.monotonic() + 600
    while f"/{slices} of study_instance_uid" not in node.log():
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    return list(datasets)


def test_a_worker_node_removed_mid_study_costs_a_retry_not_the_study(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    try:
        with running_node(tmp_path, engine=ray_engine(ray_cluster, chunk_images=1)) as node:
            datasets = send_ct_until_a_chunk_is_done(node, tmp_path, slices=8, seed=11)
            study_uid = str(datasets[0].StudyInstanceUID)
            assert node.wait_for_study(study_uid, {"processing", "done"})["state"] == "processing"
            ray_cluster.remove_worker()  # one of the two engine workers dies with its Ray node
            study = node.wait_for_study(study_uid, {"done", "failed"}, timeout=600)
            log = node.log()
        assert study["state"] == "done", study
        assert "lost" in log and "handing it out again" in log
        # Every instance accounted for: 8 images processed, none skipped, and the SEG covers all 8.
        assert study["result"]["images"] == 8 and study["result"]["skipped"] == {}
        seg_path = next(p for p in (node.data_dir / "outbox" / study_uid).glob("*.dcm") if _modality(p) == "SEG")
        seg = pydicom.dcmread(seg_path)
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert referenced == {str(d.SOPInstanceUID) for d in datasets}
        assert int(seg.NumberOfFrames) == 8
        assert_dciodvfy_clean(seg_path)
    finally:
        ray_cluster.nodes.append(ray_cluster.add_worker())


def _modality(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).Modality)


def status_text(node: NodeProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "samie_node", "status", "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return " ".join(done.stdout.split())


def wait_for_text(node: NodeProcess, text: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (current := status_text(node)):
            return current
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not in status: {status_text(node)}\n{node.log()[-3000:]}")


def test_studies_wait_while_the_cluster_is_stopped_and_complete_when_it_is_back(
    ray_cluster: RayTestCluster, studies: Path, tmp_path: Path
) -> None:
    storescu = require_tool("storescu")
    with running_node(tmp_path, engine=ray_engine(ray_cluster)) as node:
        wait_for_text(node, "engine: ray available")
        ray_cluster.stop()
        try:
            wait_for_text(node, "UNAVAILABLE")
            for folder in ("us", "photo"):
                files = [str(p) for p in (studies / folder).glob("*.dcm")]
                subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port), *files], check=True)
            uids = study_uids(studies / "us") + study_uids(studies / "photo")
            for uid in uids:
                assert node.wait_for_study(uid, {"ready", "done"})["state"] == "ready"
            text = wait_for_text(node, "2 ready studies wait in the spool")
            assert "UNAVAILABLE" in text
            time.sleep(2)  # the node keeps them waiting (and keeps receiving: the C-STOREs above succeeded)
            assert {s["state"] for s in node.status() if s["study_instance_uid"] in uids} == {"ready"}
        finally:
            ray_cluster.start()
        for uid in uids:
            study = node.wait_for_study(uid, {"done", "failed"}, timeout=600)
            assert study["state"] == "done" and study["result"]["images"] == 1, study
        assert "UNAVAILABLE" in node.log()
        wait_for_text(node, "engine: ray available")


def test_process_with_the_ray_engine_gives_the_local_outputs_and_resumes(
    ray_cluster: RayTestCluster, studies: Path, local_outputs: dict[str, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ray.toml", {"engine": ray_engine(ray_cluster, ray_address="")})
    report = run_process(studies, tmp_path / "out", config, "--ray-address", ray_cluster.address)
    assert [s["state"] for s in report["studies"]] == ["done"] * 3
    ours = outputs_by_name(tmp_path / "out")
    assert sorted(ours) == sorted(local_outputs)
    for name, path in ours.items():
        assert_dciodvfy_clean(path)
        if name.startswith("SEG-"):
            assert_same_segmentation(path, local_outputs[name])
    again = run_process(studies, tmp_path / "out", config, "--engine", "ray", "--ray-address", ray_cluster.address)
    assert [s["state"] for s in again["studies"]] == ["skipped"] * 3


def test_a_node_killed_while_its_study_is_on_the_cluster_finishes_it_after_restart(
    ray_cluster: RayTestCluster, tmp_path: Path
) -> None:
    with running_node(tmp_path, engine=ray_engine(ray_cluster, chunk_images=1)) as node:
        study_uid = str(send_ct_until_a_chunk_is_done(node, tmp_path, slices=4, seed=13)[0].StudyInstanceUID)
        assert node.process is not None
        driver = subprocess.run(["pgrep", "-P", str(node.process.pid)], capture_output=True)
        driver_pids = [int(pid) for pid in driver.stdout.split()]
        assert driver_pids, "the node's Ray driver runs as its child"
        node.kill9()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in driver_pids):  # the driver ends with its node
            assert time.monotonic() < deadline, "the Ray driver outlived its node"
            time.sleep(0.5)
        node.start()
        study = node.wait_for_study(study_uid, {"done", "failed"}, timeout=600)
    assert study["state"] == "done" and study["result"]["images"] == 4, study
    outbox = sorted(p.name for p in (node.data_dir / "outbox" / study_uid).glob("*.dcm"))
    assert len(outbox) == 2  # one SEG and one SR, written once under their derived UIDs
