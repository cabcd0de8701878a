"""End to end: Orthanc sends a study to the node, and the SEG and SR come back into the same study."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from dicom_checks import assert_dciodvfy_clean
from peers import free_port, running_node, running_orthanc

from samie_node.testing.pacs import StoreSCP
from samie_node.testing.sample_studies import ct_series, ultrasound_image, write_datasets

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def wait_for_outputs(orthanc, study_uid: str, count: int, timeout: float = 300) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [
            i
            for i in orthanc.study_instances(study_uid)
            if i["MainDicomTags"].get("SOPInstanceUID")
            and orthanc.request("GET", f"/instances/{i['ID']}/metadata/SopClassUid").decode() in (SEG_CLASS, SR_CLASS)
        ]
        if len(found) >= count:
            return found
        time.sleep(1)
    raise TimeoutError(f"only {len(found)} of {count} results arrived in Orthanc")


def test_orthanc_study_comes_back_with_seg_and_sr(tmp_path: Path) -> None:
    ct, _ = ct_series(slices=4, rows=128, columns=128, seed=21)
    us, _ = ultrasound_image(rows=240, columns=320, seed=22)
    ct_paths = write_datasets(ct, tmp_path / "ct")
    us_paths = write_datasets([us], tmp_path / "us")
    second = StoreSCP(free_port(), ae_title="ARCHIVE").start()
    with (
        running_orthanc(tmp_path / "pacs") as orthanc,
        running_node(
            tmp_path,
            send={
                "return_to_caller": True,
                "return_port": orthanc.dicom_port,
                "destinations": [{"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": second.port}],
            },
        ) as node,
    ):
        try:
            orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
            for paths in (ct_paths, us_paths):
                orthanc.store_to("samie", [orthanc.upload(p) for p in paths])
            for dataset, sources in ((ct[0], ct_paths), (us, us_paths)):
                study_uid = str(dataset.StudyInstanceUID)
                results = wait_for_outputs(orthanc, study_uid, 2)
                files = {}
                for item in results:
                    path = tmp_path / f"{item['ID']}.dcm"
                    path.write_bytes(orthanc.instance_file(item["ID"]))
                    files[pydicom.dcmread(path).SOPClassUID] = path
                seg = pydicom.dcmread(files[SEG_CLASS])
                sr = pydicom.dcmread(files[SR_CLASS])
                assert_dciodvfy_clean(files[SEG_CLASS])
                assert_dciodvfy_clean(files[SR_CLASS])
                source_uids = {d.SOPInstanceUID for d in (ct if sources is ct_paths else [us])}
                referenced = {
                    i.ReferencedSOPInstanceUID
                    for s in seg.ReferencedSeriesSequence
                    for i in s.ReferencedInstanceSequence
                }
                assert referenced == source_uids
                assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
                assert seg.PatientID == dataset.PatientID
                evidence = {
                    i.ReferencedSOPInstanceUID
                    for st in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in st.ReferencedSeriesSequence
                    for i in se.ReferencedSOPSequence
                }
                assert seg.SOPInstanceUID in evidence and source_uids <= evidence
                status = {s["study_instance_uid"]: s for s in node.status()}[study_uid]
                assert status["state"] == "done"
                outputs = status["outputs"]
                assert {o["destination"] for o in outputs} == {second.peer, f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"}
                # Delivered once per destination, by UID.
                deadline = time.monotonic() + 60
                while {o["state"] for o in outputs} != {"sent"} and time.monotonic() < deadline:
                    time.sleep(0.5)
                    outputs = {s["study_instance_uid"]: s for s in node.status()}[study_uid]["outputs"]
                assert {o["state"] for o in outputs} == {"sent"}
            assert sorted(second.uids()) == sorted(set(second.uids()))
            assert len(second.uids()) == 4
        finally:
            second.stop()
