"""The web face of ``samie-node serve`` with real peers: the console in chromium, DICOMweb out and in.

One node (a subprocess with its models) serves the whole module, with two DICOMweb destinations: the
node's own STOW-RS endpoint with a wrong token (refused with 401: every result becomes a dead letter at
once, for the console's re-send), and an Orthanc with its DICOMweb plugin that is down until the test
of that destination starts it. Studies arrive by dcmtk ``storescu``, by ``dicomweb-client`` (STOW-RS)
and by Orthanc's own DICOMweb client (``/dicom-web/servers/{name}/stow``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from peers import REPO, NodeProcess, Orthanc, require_tool, running_node, running_orthanc
from viewer_support import CHROMIUM, DICOMWEB_PLUGIN, VIEWER_DIR, require_viewer_parts
from web_support import TOKEN, bearer, scrape, value

from samie_node.testing.ports import free_port
from samie_node.testing.sample_studies import PATIENT_ID, PATIENT_NAME, ultrasound_image, write_datasets

pytestmark = pytest.mark.slow

SCREENSHOTS = REPO / "tests" / "viewer" / "console-latest"


@dataclass
class Site:
    node: NodeProcess
    pacs: Orthanc
    url: str
    archive_port: int
    tmp: Path

    def outputs(self, study_instance_uid: str) -> list[dict[str, Any]]:
        studies = {s["study_instance_uid"]: s for s in self.node.status()}
        return list(studies.get(study_instance_uid, {}).get("outputs", []))

    def wait_outputs(self, study_instance_uid: str, destination: str, state: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [o for o in self.outputs(study_instance_uid) if o["destination"] == destination]
            if mine and all(o["state"] == state for o in mine):
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"outputs of {study_instance_uid} to {destination} not {state}: {self.outputs(study_instance_uid)}"
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console")
    http_port, archive_port = free_port(), free_port()
    destinations = [
        {"kind": "dicomweb", "name": "selfcheck", "url": f"http://127.0.0.1:{http_port}/dicomweb", "token": "w" * 20},
        {"kind": "dicomweb", "name": "archive", "url": f"http://127.0.0.1:{archive_port}/dicom-web"},
    ]
    with (
        running_orthanc(tmp / "pacs", plugins=[DICOMWEB_PLUGIN]) as pacs,
        running_node(
            tmp,
            http={"port": http_port, "token": TOKEN},
            send={"destinations": destinations, "backoff_initial_s": 0.5, "backoff_max_s": 1.0, "max_attempts": 1000},
        ) as node,
    ):
        yield Site(node, pacs, f"http://127.0.0.1:{http_port}", archive_port, tmp)


def _study(tmp: Path, seed: int) -> tuple[str, list[Path]]:
    image, _ = ultrasound_image(rows=200, columns=240, seed=seed)
    return str(image.StudyInstanceUID), write_datasets([image], tmp / f"study-{seed}")


def test_console_in_chromium(site: Site) -> None:
    node_js = require_viewer_parts()
    storescu = require_tool("storescu")
    study_uid, paths = _study(site.tmp, 41)
    subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(site.node.port), *map(str, paths)], check=True)
    site.node.wait_for_study(study_uid, {"done"})
    site.wait_outputs(study_uid, "dicomweb:selfcheck", "dead")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    plan = {
        "url": site.url,
        "token": TOKEN,
        "study": study_uid,
        "resend_to": site.pacs.peer,
        "chromium": CHROMIUM,
        "out": str(SCREENSHOTS),
    }
    (SCREENSHOTS / "plan.json").write_text(json.dumps(plan))
    done = subprocess.run(
        [node_js, str(VIEWER_DIR / "console.mjs"), str(SCREENSHOTS / "plan.json")],
        cwd=VIEWER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((SCREENSHOTS / "results.json").read_text())
    assert results["study_listed"] and results["study_state"] == "done"
    assert results["previews"] and all(w > 0 and h > 0 for w, h in results["previews"]), results["previews"]
    rows = [row.split("\t") for row in results["outputs"]]  # UID, class, destination, state, attempts, error
    assert (
        sorted((row[2], row[3]) for row in rows)
        == [("dicomweb:archive", "retrying")] * 2 + [("dicomweb:selfcheck", "dead")] * 2
    ), rows
    assert "SAM region" in results["findings"] or "Area" in results["findings"], results["findings"]
    assert results["dead_before"] == 2
    assert results["resend_without_login"]["status"] == 401, results["resend_without_login"]
    assert results["resend_logged_in"]["status"] == 200
    assert "re-sent 2 of 2" in results["resend_logged_in"]["message"], results["resend_logged_in"]
    assert results["cross_origin_status"] == 403
    returned = {i["MainDicomTags"].get("SOPInstanceUID") for i in site.pacs.study_instances(study_uid)}
    assert returned == {o["sop_instance_uid"] for o in site.outputs(study_uid)}  # SEG and SR, by the re-send
    assert {o["state"] for o in site.outputs(study_uid) if o["destination"] == site.pacs.peer} == {"sent"}
    pages = {name: (SCREENSHOTS / file).read_text() for name, file in results["pages"].items()}
    assert not [name for name, html in pages.items() if PATIENT_ID in html or PATIENT_NAME in html]
    audit = [json.loads(line) for line in (site.node.data_dir / "audit.jsonl").read_text().splitlines()]
    actions = [(e["event"], e.get("action")) for e in audit if e["event"].startswith("http_action")]
    assert ("http_action", "resend") in actions and actions.count(("http_action_refused", "resend")) == 2


def test_dicomweb_destination_down_then_up_gets_each_result_once(site: Site) -> None:
    done = [s for s in site.node.status() if s["state"] == "done"]
    assert done, "test_console_in_chromium processes a study first"
    study_uid = done[0]["study_instance_uid"]
    assert {o["state"] for o in site.outputs(study_uid) if o["destination"] == "dicomweb:archive"} == {"retrying"}
    with running_orthanc(site.tmp / "archive", plugins=[DICOMWEB_PLUGIN], http_port=site.archive_port) as archive:
        site.wait_outputs(study_uid, "dicomweb:archive", "sent")
        stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in archive.study_instances(study_uid)}
    assert stored == {o["sop_instance_uid"] for o in site.outputs(study_uid) if o["destination"] == "dicomweb:archive"}
    assert len(stored) == 2  # the SEG and the SR
    audit = [json.loads(line) for line in (site.node.data_dir / "audit.jsonl").read_text().splitlines()]
    sent = sum(e["sent"] for e in audit if e["event"] == "results_sent" and e["destination"] == "dicomweb:archive")
    assert sent == 2  # each result delivered exactly once, after the failed attempts
    retried = [e for e in audit if e["event"] == "results_sent" and e["destination"] == "dicomweb:archive"]
    assert len(retried) >= 2 and retried[0]["retrying"] == 2


def test_stow_in_from_dicomweb_client_and_from_orthanc_is_processed(site: Site) -> None:
    client_study, client_paths = _study(site.tmp, 42)
    answer = DICOMwebClient(f"{site.url}/dicomweb", headers=bearer()).store_instances(
        [pydicom.dcmread(p) for p in client_paths]
    )
    assert len(answer.ReferencedSOPSequence) == 1
    orthanc_study, orthanc_paths = _study(site.tmp, 43)
    instance_id = site.pacs.upload(orthanc_paths[0])
    server = {"Url": f"{site.url}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}
    site.pacs.request("PUT", "/dicom-web/servers/samie", server)
    site.pacs.request("POST", "/dicom-web/servers/samie/stow", {"Resources": [instance_id]})
    for study_uid in (client_study, orthanc_study):
        site.node.wait_for_study(study_uid, {"done"})


def test_metrics_after_processing(site: Site) -> None:
    samples = scrape(site.url)
    assert value(samples, "samie_studies_processed_total", outcome="done") >= 1
    assert value(samples, "samie_stage_duration_seconds_count", stage="segment") >= 1
    inference = [v for (name, labels), v in samples.items() if name == "samie_inference_duration_seconds_count"]
    assert len(inference) == 1 and inference[0] >= 1  # one model (no classifier), one device
    assert value(samples, "samie_results_sent_total", destination="dicomweb:selfcheck", outcome="dead") >= 2
    assert value(samples, "samie_studies", state="done") >= 1
    assert value(samples, "samie_instances_received_total", status="0x0000") >= 1
