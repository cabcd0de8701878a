"""The listener in-process, driven by a real pynetdicom SCU over loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import free_port, tmpfs
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from samie_node.audit import AuditLog
from samie_node.config import Settings, load_settings
from samie_node.net.receive import Receiver, configure_pynetdicom
from samie_node.spool import TMP_MARKER, Spool

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))


@contextlib.contextmanager
def receiver(tmp_path: Path, data_dir: Path | None = None, **overrides: Any) -> Iterator[tuple[Receiver, Settings]]:
    node = {"host": "127.0.0.1", "port": free_port(), "data_dir": str(data_dir or tmp_path / "data")}
    node.update(overrides.pop("node", {}))
    settings = load_settings(None, {"node": node, **overrides})
    configure_pynetdicom()
    spool = Spool(settings.node.data_dir)
    audit = AuditLog(settings.audit_path)
    rx = Receiver(settings, spool, audit)
    rx.start()
    try:
        yield rx, settings
    finally:
        rx.stop()
        spool.close()
        audit.close()


def scu(calling: str = "TESTSCU") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def send(settings: Settings, dataset: Any, calling: str = "TESTSCU") -> int:
    assoc = scu(calling).associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status)
    finally:
        assoc.release()


def spool_files(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.node.data_dir / "spool").rglob("*") if p.is_file())


def test_echo_and_store(tmp_path: Path) -> None:
    with receiver(tmp_path) as (rx, settings):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        original = pydicom.dcmread(CT_SMALL)
        assert send(settings, original) == 0x0000
        [path] = spool_files(settings)
        stored = pydicom.dcmread(path)
        assert stored.SOPInstanceUID == original.SOPInstanceUID
        assert stored.PixelData == original.PixelData
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert rx.stored == 1


def test_hostile_sop_instance_uid_is_refused(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_rx, settings):
        # pynetdicom's SCU itself refuses to send an Affected SOP Instance UID over 64 characters, so
        # the over-long case travels in the dataset's Study and Series Instance UIDs.
        for bad in ["../../../etc/passwd", "1.2.3/../../x", "..", "1.2.abc"]:
            ds = pydicom.dcmread(CT_SMALL)
            ds.SOPInstanceUID = bad
            assert send(settings, ds) == 0xC211, bad
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            for bad in ["../../evil", "1.2/evil", "1." + "2" * 70]:
                ds = pydicom.dcmread(CT_SMALL)
                setattr(ds, keyword, bad)
                assert send(settings, ds) == 0xC211, (keyword, bad)
        assert spool_files(settings) == []
        assert not list(tmp_path.rglob("passwd")) and not list(tmp_path.rglob("evil*"))


def test_dataset_without_study_uid_cannot_be_understood(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_rx, settings):
        ds = pydicom.dcmread(CT_SMALL)
        del ds.StudyInstanceUID
        assert send(settings, ds) == 0xC210
        assert spool_files(settings) == []


def test_truncated_file_is_refused_and_node_carries_on(tmp_path: Path) -> None:
    raw = CT_SMALL.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    # Cut inside the header elements, before the Study Instance UID.
    cut = raw.find(b"\x20\x00\x0d\x00")
    truncated.write_bytes(raw[: cut + 3])
    with receiver(tmp_path) as (_rx, settings):
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, without decoding
        try:
            status = send(settings, truncated)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert status in (0xC210, 0xC211)
        assert spool_files(settings) == []
        assert send(settings, pydicom.dcmread(CT_SMALL)) == 0x0000


def test_unknown_calling_ae_rejected_when_allow_list_set(tmp_path: Path) -> None:
    allowed = {"allowed_peers": [{"ae_title": "GOODPACS", "host": "127.0.0.1"}]}
    with receiver(tmp_path, node=allowed) as (_rx, settings):
        assoc = scu("BADPACS").associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.result == 0x01  # rejected-permanent
        assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
        assert send(settings, pydicom.dcmread(CT_SMALL), calling="GOODPACS") == 0


def test_wrong_called_ae_rejected(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_rx, settings):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title="NOT_THE_NODE")
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.diagnostic == 0x07


def test_disk_floor_refuses_new_associations_and_gives_out_of_resources_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 2**50}
    monkeypatch.setattr(Spool, "free_bytes", lambda _self: free["bytes"])
    with receiver(tmp_path, limits={"disk_floor_bytes": 2**30}) as (_rx, settings):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert assoc.is_established
        try:
            # The disk drops below the floor while this association is open: its stores get 0xA700.
            free["bytes"] = 2**20
            assert assoc.send_c_store(pydicom.dcmread(CT_SMALL)).Status == 0xA700
        finally:
            assoc.release()
        # A new association is refused, transiently (temporary congestion), so the PACS retries later.
        refused = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert refused.is_rejected
        assert refused.acceptor.primitive.result == 0x02  # rejected-transient
        assert refused.acceptor.primitive.result_source == 0x03  # service-provider (presentation)
        assert refused.acceptor.primitive.diagnostic == 0x01  # temporary congestion
        assert spool_files(settings) == []
        free["bytes"] = 2**50  # space freed: stores are accepted again
        assert send(settings, pydicom.dcmread(CT_SMALL)) == 0x0000


def test_instance_over_the_size_limit_gets_a_status_and_the_association_carries_on(tmp_path: Path) -> None:
    # CT_small is about 39 KB; fragments of at most ~16 KB each (the node's maximum PDU length), so the
    # limit is passed while the fragments arrive: the node stops keeping them, reads the rest, answers.
    with receiver(tmp_path, limits={"max_instance_bytes": 20_000}, node={"maximum_pdu_length": 16384}) as (
        rx,
        settings,
    ):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(pydicom.dcmread(CT_SMALL))
            assert status.Status == 0xC212  # refused: larger than limits.max_instance_bytes
            assert spool_files(settings) == []
            # The same association goes on: an instance within the limit is stored.
            small = pydicom.dcmread(CT_SMALL)
            small.PixelData = small.PixelData[:4096]
            small.Rows, small.Columns = 32, 64
            assert assoc.send_c_store(small).Status == 0x0000
        finally:
            assoc.release()
        assert rx.stored == 1
        assert len(spool_files(settings)) == 1
        audit = (settings.node.data_dir / "audit.jsonl").read_text(encoding="utf-8")
        assert '"instance_refused"' in audit and "max_instance_bytes" in audit and '"0xC212"' in audit


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 400 KiB tmpfs (the tests run as root in CI, as .ci/run does)."""
    with tmpfs(tmp_path / "tiny", "400k") as mount:
        yield mount


def test_full_disk_gives_out_of_resources_and_no_partial_file(tmp_path: Path, tiny_disk: Path) -> None:
    big = pydicom.dcmread(CT_SMALL)
    with receiver(tmp_path, data_dir=tiny_disk, limits={"disk_floor_bytes": 0}) as (_rx, settings):
        statuses = []
        for index in range(20):  # 20 x 38 KB does not fit in 400 KiB next to the index
            big.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{index}"
            statuses.append(send(settings, big))
        assert statuses[0] == 0x0000
        assert 0xA700 in statuses
        assert set(statuses) <= {0x0000, 0xA700}
        files = spool_files(settings)
        assert not [p for p in files if TMP_MARKER in p.name]
        assert len(files) == statuses.count(0x0000)
        for path in files:  # every acknowledged file is complete
            assert pydicom.dcmread(path).PixelData == big.PixelData


@pytest.mark.parametrize(
    "caps",
    [
        {"max_associations": 10, "max_associations_per_peer": 2},  # the per-peer cap (receiver policy)
        {"max_associations": 2, "max_associations_per_peer": 10},  # the total cap (listener)
    ],
)
def test_association_caps_reject_transiently(tmp_path: Path, caps: dict[str, int]) -> None:
    with receiver(tmp_path, node=caps) as (_rx, settings):
        open_ones = [scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE") for _ in range(2)]
        try:
            assert all(a.is_established for a in open_ones)
            third = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
            state = {name: getattr(third, name) for name in ("is_established", "is_rejected", "is_aborted")}
            if third.is_established:
                third.release()
            # Once (a full clean-clone run, not reproduced alone) the third was not rejected: say how it ended.
            assert third.is_rejected, (
                f"third association: {state}; first two established: {[a.is_established for a in open_ones]}"
            )
            primitive = third.acceptor.primitive
            # rejected-transient, service provider (presentation), local limit exceeded
            assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x02, 0x03, 0x02)
        finally:
            for assoc in open_ones:
                assoc.release()
        again = scu().associate("127.0.0.1", settings.node.port, ae_title="SAMIE_NODE")
        assert again.is_established  # slots are given back on release
        again.release()
