"""The web face in process: /metrics against real C-STOREs (dcmtk), health, STOW-RS in, actions, PHI, HTTPS.

The node here has no models (no worker): what is tested is what the HTTP server, the listener and the
index do. Processing, the browser and Orthanc are in ``test_console.py``.
"""

from __future__ import annotations

import io
import subprocess
import uuid
from http.client import HTTPException
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from peers import require_tool
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from web_support import ENGINE, TOKEN, bearer, http, http_expect_continue, running_web_node, scrape, value

from samie_node.testing.sample_studies import PATIENT_ID, PATIENT_NAME, ct_series, ultrasound_image


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dataset_bytes(path: Path) -> int:
    """Bytes of a stored instance's dataset (what the peer sent), without preamble and File Meta."""
    data = path.read_bytes()
    return len(data) - (144 + int.from_bytes(data[140:144], "little"))


def test_metrics_move_by_what_a_store_did(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    with running_web_node(tmp_path) as web:
        before = scrape(web.url)
        port = str(web.settings.node.port)
        good = [str(get_testdata_file("CT_small.dcm")), str(get_testdata_file("MR_small.dcm"))]
        subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", port, *good], check=True, timeout=60)
        no_uids = str(get_testdata_file("JPEGLSNearLossless_16.dcm"))  # no Study/Series UID: 0xC210
        subprocess.run([storescu, "-aec", "SAMIE_NODE", "-R", "-xu", "127.0.0.1", port, no_uids], timeout=60)
        after = scrape(web.url)
        stored = web.spool_files()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert len(stored) == 2
    assert moved("samie_instances_received_total", status="0x0000") == 2
    assert moved("samie_instances_received_total", status="0xC210") == 1
    assert moved("samie_received_bytes_total") == sum(_dataset_bytes(p) for p in stored)
    assert moved("samie_associations_total", outcome="accepted") == 2
    assert moved("samie_studies", state="receiving") == 2  # read from the index at scrape time
    assert moved("samie_spool_bytes") == sum(p.stat().st_size for p in stored)
    assert value(after, "samie_disk_free_bytes") > 0
    assert value(after, "samie_build_info", backend="local", device="cpu", model="LiteMedSAM",
                 model_version=ENGINE.models_info().algorithm.model_version, version="0.1.0") == 1  # fmt: skip
    assert not [key for key in after if any("." in v and v.count(".") > 3 for _, v in key[1])], "a UID as a label"


def test_readyz_fails_when_the_disk_floor_is_crossed(tmp_path: Path) -> None:
    with running_web_node(tmp_path / "ok") as web:
        ready = http("GET", f"{web.url}/readyz")
        assert ready.status == 200, ready.text
        assert set(ready.json()["checks"]) == {"listener", "models", "index", "disk"}
    with running_web_node(tmp_path / "full", limits={"disk_floor_bytes": 2**62}) as web:
        ready = http("GET", f"{web.url}/readyz")
        assert ready.status == 503
        checks = ready.json()["checks"]
        assert not checks["disk"]["ok"] and checks["listener"]["ok"] and checks["index"]["ok"], checks
        assert http("GET", f"{web.url}/healthz").status == 200  # alive, just not ready


def test_stow_from_dicomweb_client_lands_in_the_spool(tmp_path: Path) -> None:
    datasets, _ = ct_series(slices=3, rows=64, columns=64, seed=5)
    with running_web_node(tmp_path) as web:
        client = DICOMwebClient(f"{web.url}/dicomweb", headers=bearer())
        answer = client.store_instances(datasets)
        assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
            str(d.SOPInstanceUID) for d in datasets
        ]
        assert "FailedSOPSequence" not in answer
        assert {p.stem for p in web.spool_files()} == {str(d.SOPInstanceUID) for d in datasets}
        stored = pydicom.dcmread(web.spool_files()[0])
        assert stored.file_meta.TransferSyntaxUID == datasets[0].file_meta.TransferSyntaxUID
        study = web.node.spool.study(str(datasets[0].StudyInstanceUID))
        assert study is not None and study.instances == 3 and study.state == "receiving"
        assert value(scrape(web.url), "samie_instances_received_total", status="0x0000") == 3


def _multipart(parts: list[bytes], boundary: str = "samie-test-boundary", close: bool = True) -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=samie-test-boundary'


def test_hostile_stow_requests_get_their_answer_and_leave_nothing_partial(tmp_path: Path) -> None:
    datasets, _ = ct_series(slices=2, rows=64, columns=64, seed=9)
    good, other = (_part10(d) for d in datasets)
    hostile = datasets[1].copy()
    hostile.SOPInstanceUID = hostile.file_meta.MediaStorageSOPInstanceUID = "1.2.3/../../evil"
    [large], _ = ct_series(slices=1, rows=512, columns=512, seed=3)  # 512 KB of pixels, over the 200 KB below
    with running_web_node(
        tmp_path, limits={"max_instance_bytes": 200_000}, http={"max_request_bytes": 1_000_000}
    ) as web:
        url, headers = f"{web.url}/dicomweb/studies", {**bearer(), "Content-Type": STOW_TYPE}

        def post(body: bytes, extra: dict[str, str] | None = None) -> tuple[int, Dataset]:
            reply = http("POST", url, body, {**headers, **(extra or {})})
            is_json = "dicom+json" in reply.headers.get("content-type", "")
            return reply.status, Dataset.from_json(reply.json()) if is_json else Dataset()

        assert post(_multipart([good]), {"Authorization": ""})[0] == 401
        assert post(_multipart([good]), bearer("wrong-token-0123456789"))[0] == 401
        assert post(_multipart([good]), {"Content-Type": "application/dicom"})[0] == 415
        assert web.spool_files() == []

        status, answer = post(_multipart([_part10(hostile)]))
        assert status == 409
        [failed] = answer.FailedSOPSequence
        assert failed.FailureReason == 0xC211 and failed.ReferencedSOPInstanceUID == ""  # not echoed back

        status, answer = post(_multipart([good, other[: len(other) // 2]], close=False))  # cut inside part 2
        assert status == 202
        assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [datasets[0].SOPInstanceUID]
        assert answer.FailedSOPSequence[0].FailureReason == 0xC210

        status, answer = post(_multipart([_part10(large)]))
        assert status == 409 and answer.FailedSOPSequence[0].FailureReason == 0xC212
        assert answer.FailedSOPSequence[0].ReferencedSOPInstanceUID == large.SOPInstanceUID

        # 1.5 MB declared: refused from the headers, before any of the body is read
        too_large, body_sent = http_expect_continue(url, _multipart([_part10(large)] * 3), headers)
        assert too_large.status == 413 and not body_sent, too_large.text
        assert [p.stem for p in web.spool_files()] == [datasets[0].SOPInstanceUID]
        assert web.temp_files() == []
        refused = [e for e in web.audit() if e["event"] == "http_action_refused"]
        assert len(refused) == 2 and {e["action"] for e in refused} == {"stow"}


def test_actions_need_the_token_and_the_console_origin(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    with running_web_node(tmp_path) as web:
        ct = str(get_testdata_file("CT_small.dcm"))
        subprocess.run([storescu, "-aec", "SAMIE_NODE", "127.0.0.1", str(web.settings.node.port), ct], check=True)
        study_uid = web.node.spool.studies()[0].study_instance_uid
        web.node.spool.mark_quiet_studies_ready(0)
        assert web.node.spool.claim_ready_study() == study_uid
        web.node.spool.finish_study(study_uid, "failed", "a reason", {})
        form = f"study={study_uid}".encode()
        plain = {"Content-Type": "application/x-www-form-urlencoded"}
        assert http("POST", f"{web.url}/actions/reprocess", form, plain).status == 401
        login = http("POST", f"{web.url}/login", f"token={TOKEN}".encode(), {**plain, "Origin": web.url})
        assert login.status == 303
        cookie = login.headers.get("set-cookie", "").split(";")[0]
        assert cookie.startswith("samie_session=") and TOKEN not in cookie
        evil = {**plain, "Cookie": cookie, "Origin": "http://127.0.0.1:1"}
        assert http("POST", f"{web.url}/actions/reprocess", form, evil).status == 403
        assert http("POST", f"{web.url}/actions/reprocess", form, {**plain, "Cookie": cookie}).status == 403
        assert web.node.spool.study(study_uid).state == "failed"  # type: ignore[union-attr]
        done = http("POST", f"{web.url}/actions/reprocess", form, {**plain, "Cookie": cookie, "Origin": web.url})
        assert done.status == 200 and "queued 1" in done.text
        assert web.node.spool.study(study_uid).state == "ready"  # type: ignore[union-attr]
        events = [(e["event"], e.get("action")) for e in web.audit() if e["event"].startswith("http_action")]
        assert events == [("http_action_refused", "reprocess")] * 3 + [("http_action", "reprocess")]


def _pages(url: str, study_uid: str) -> dict[str, str]:
    paths = ["/", "/studies", f"/studies/{study_uid}", "/failures", "/audit", "/metrics", "/readyz", "/login"]
    return {path: http("GET", url + path).text for path in paths}


def test_no_patient_data_on_any_page_unless_show_phi(tmp_path: Path) -> None:
    image, _ = ultrasound_image(rows=64, columns=64, seed=11)
    image.AccessionNumber = f"ACC{uuid.uuid4().hex[:8]}"
    for show_phi in (False, True):
        with running_web_node(tmp_path / str(show_phi), http={"show_phi": show_phi}) as web:
            DICOMwebClient(f"{web.url}/dicomweb", headers=bearer()).store_instances([image])
            pages = _pages(web.url, str(image.StudyInstanceUID))
        assert str(image.StudyInstanceUID) in pages[f"/studies/{image.StudyInstanceUID}"]
        shown = {path for path, text in pages.items() if PATIENT_ID in text or str(PATIENT_NAME) in text}
        assert shown == ({f"/studies/{image.StudyInstanceUID}"} if show_phi else set()), shown
        assert any(image.AccessionNumber in text for text in pages.values()) == show_phi


def test_https_with_the_node_certificate(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "node.key", "-out", "node.crt"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = {"certificate": str(tmp_path / "node.crt"), "private_key": str(tmp_path / "node.key")}
    with running_web_node(tmp_path, node={"tls": tls}, http={"tls": True}) as web:
        assert web.url.startswith("https://")
        assert http("GET", f"{web.url}/healthz", cafile=str(tmp_path / "node.crt")).status == 200
        with pytest.raises((OSError, HTTPException)):
            http("GET", f"{web.url}/healthz".replace("https://", "http://"))
