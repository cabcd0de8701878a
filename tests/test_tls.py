"""DICOM TLS: dcmtk and Orthanc as TLS peers of the node, in both directions; refusals are clean."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from peers import free_port, require_tool, running_node, running_orthanc

from samie_node.testing.sample_studies import ultrasound_image, write_datasets


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: str, *, usage: str) -> None:
    """A key and a certificate signed by ``ca`` for loopback, with the given extended key usage."""
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=folder,
    )
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        ext.name,
        cwd=folder,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with server and client certificates, and a rogue CA with a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            cwd=folder,
        )
    _issue(folder, "node", "ca", usage="serverAuth")
    # Orthanc (dcmtk) presents one certificate in both roles; give it one good for either.
    _issue(folder, "pacs", "ca", usage="serverAuth,clientAuth")
    _issue(folder, "client", "ca", usage="clientAuth")
    _issue(folder, "rogue", "rogue-ca", usage="clientAuth")
    return folder


def tls_node_sections(pki: Path, tls_port: int) -> dict[str, dict[str, object]]:
    return {
        "node": {
            "tls_port": tls_port,
            "tls": {
                "certificate": str(pki / "node.crt"),
                "private_key": str(pki / "node.key"),
                "ca_certificates": str(pki / "ca.crt"),
                "require_client_certificate": True,
            },
        }
    }


def dcmtk_tls(tool: str, pki: Path, key: str, port: int, *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool(tool),
            "+tls",
            str(pki / f"{key}.key"),
            str(pki / f"{key}.crt"),
            "+cf",
            str(pki / "ca.crt"),
            "-aec",
            "SAMIE_NODE",
            "127.0.0.1",
            str(port),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dcmtk_over_tls_and_refusals(tmp_path: Path, pki: Path) -> None:
    tls_port = free_port()
    us, _ = ultrasound_image(rows=64, columns=64)
    [path] = write_datasets([us], tmp_path / "us")
    with running_node(tmp_path, **tls_node_sections(pki, tls_port)) as node:
        assert dcmtk_tls("echoscu", pki, "client", tls_port).returncode == 0
        stored = dcmtk_tls("storescu", pki, "client", tls_port, str(path))
        assert stored.returncode == 0, stored.stderr
        assert node.wait_for_study(str(us.StudyInstanceUID), {"receiving", "ready", "processing", "done"})
        # A client whose certificate no trusted CA signed is refused.
        rogue = dcmtk_tls("echoscu", pki, "rogue", tls_port)
        assert rogue.returncode != 0
        # Plain DICOM to the TLS port fails cleanly and quickly, and the node stays up.
        started = time.monotonic()
        plain = subprocess.run(
            [require_tool("echoscu"), "-to", "10", "-aec", "SAMIE_NODE", "127.0.0.1", str(tls_port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode != 0 and time.monotonic() - started < 30
        # The plain listener works beside the TLS one.
        assert (
            subprocess.run(
                [require_tool("echoscu"), "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port)], timeout=30
            ).returncode
            == 0
        )
        assert dcmtk_tls("echoscu", pki, "client", tls_port).returncode == 0
        assert node.alive()
        audit = [json.loads(line) for line in (node.data_dir / "audit.jsonl").read_text().splitlines()]
        assert any(event["event"] == "tls_handshake_failed" for event in audit)


def test_orthanc_and_node_talk_tls_both_ways(tmp_path: Path, pki: Path) -> None:
    tls_port = free_port()
    us, _ = ultrasound_image(rows=120, columns=160, seed=51)
    [path] = write_datasets([us], tmp_path / "us")
    with running_orthanc(
        tmp_path / "pacs",
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki / "pacs.crt"),
            "DicomTlsPrivateKey": str(pki / "pacs.key"),
            "DicomTlsTrustedCertificates": str(pki / "ca.crt"),
            "DicomTlsRemoteCertificateRequired": True,
        },
    ) as orthanc:
        sections = tls_node_sections(pki, tls_port)
        sections["send"] = {
            "destinations": [
                {
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "tls": {
                        "certificate": str(pki / "client.crt"),
                        "private_key": str(pki / "client.key"),
                        "ca_certificates": str(pki / "ca.crt"),
                    },
                }
            ]
        }
        with running_node(tmp_path, **sections) as node:
            orthanc.request(
                "PUT",
                "/modalities/samie",
                {"AET": "SAMIE_NODE", "Host": "127.0.0.1", "Port": tls_port, "UseDicomTls": True},
            )
            orthanc.store_to("samie", [orthanc.upload(path)])
            node.wait_for_study(str(us.StudyInstanceUID), {"done"}, timeout=300)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                outputs = {s["study_instance_uid"]: s for s in node.status()}[str(us.StudyInstanceUID)]["outputs"]
                if outputs and {o["state"] for o in outputs} == {"sent"}:
                    break
                time.sleep(1)
            assert {o["state"] for o in outputs} == {"sent"}, outputs
            assert len(orthanc.study_instances(str(us.StudyInstanceUID))) == 3  # the image, its SEG and its SR
