"""Hostile input at the DICOM port: each case must leave the node up and nothing partial on disk.

The node runs as ``samie-node serve`` (one process for the module); the peer is a raw socket that sends
what a broken or malicious sender could: random bytes, oversized and truncated PDUs, an association
aborted mid-instance, hostile UIDs, huge declared dimensions, deep nesting, invalid VRs, deflated bytes.
A property-based test (hypothesis) then mutates a valid C-STORE and checks the same promises.
"""

from __future__ import annotations

import copy
import os
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import NodeProcess, require_tool, running_node
from pydicom.data import get_testdata_file
from raw_dicom import (
    A_ABORT,
    CT_IMAGE_STORAGE,
    encoded_dataset,
    nested_sequence,
    raw_association,
    read_status,
    store_pdus,
)

from samie_node.spool import TMP_MARKER

CT = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
CT_BYTES = encoded_dataset(CT)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    with running_node(tmp, limits={"max_sequence_depth": 16}) as running:
        yield running


def spool_files(node: NodeProcess) -> list[Path]:
    return sorted(p for p in (node.data_dir / "spool").rglob("*") if p.is_file())


def assert_healthy(node: NodeProcess) -> None:
    """Up, answering, and nothing half-written anywhere in the data directory."""
    assert node.alive()
    assert (
        subprocess.run(
            [require_tool("echoscu"), "-aec", "SAMIE_NODE", "127.0.0.1", str(node.port)], timeout=30
        ).returncode
        == 0
    )
    assert not [p for p in node.data_dir.rglob(f"*{TMP_MARKER}*")]
    for path in spool_files(node):
        pydicom.dcmread(path, stop_before_pixels=True)  # every stored file is whole


def closed_or_aborted(sock: socket.socket, timeout: float = 15) -> bytes:
    """Read until the node closes the connection; returns what it sent (an A-ABORT or A-ASSOCIATE-RJ)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return received
        if not chunk:
            return received
        received += chunk


def test_random_bytes_before_association(node: NodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(os.urandom(65536))
        answer = closed_or_aborted(sock)
    assert answer[:1] in (b"", b"\x03", b"\x07")  # nothing, A-ASSOCIATE-RJ or A-ABORT
    assert_healthy(node)


def test_oversized_association_request(node: NodeProcess) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 1024)
        answer = closed_or_aborted(sock)
    assert answer[:1] in (b"", b"\x07")
    assert time.monotonic() - started < 15  # refused at once, not after reading 4 GiB
    assert_healthy(node)


def test_p_data_longer_than_negotiated_is_aborted(node: NodeProcess) -> None:
    with raw_association(node.port) as (sock, _):
        sock.sendall(struct.pack(">BBL", 0x04, 0, 100_000_000) + b"\x00" * 4096)
        answer = closed_or_aborted(sock)
    assert answer[:1] == b"\x07"  # A-ABORT
    assert_healthy(node)


def test_truncated_pdu_then_close(node: NodeProcess) -> None:
    before = spool_files(node)
    with raw_association(node.port) as (sock, context_id):
        pdu = store_pdus(context_id, CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.901", CT_BYTES)[1]
        sock.sendall(pdu[: len(pdu) // 3])
    time.sleep(1)
    assert spool_files(node) == before
    assert_healthy(node)


def test_association_aborted_mid_instance_leaves_nothing(node: NodeProcess) -> None:
    before = spool_files(node)
    sop = "1.2.826.0.1.3680043.8.498.902"
    with raw_association(node.port) as (sock, context_id):
        pdus = store_pdus(context_id, CT_IMAGE_STORAGE, sop, CT_BYTES, chunk=4096)
        for pdu in pdus[: len(pdus) // 2]:
            sock.sendall(pdu)
        sock.sendall(A_ABORT)
    time.sleep(1)
    assert spool_files(node) == before
    assert sop not in str(node.status())
    assert_healthy(node)


@pytest.mark.parametrize(
    "sop",
    ["../../../../etc/passwd", "1.2.3/../../../x", "1." + "2" * 80, "1.2.3\\4", "1.2.3.4 OR 1=1"],
)
def test_hostile_uids_in_the_command(node: NodeProcess, sop: str) -> None:
    dataset = copy.deepcopy(CT)
    dataset.SOPInstanceUID = sop
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, sop, encoded_dataset(dataset)):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status is None or status >= 0xA000, status  # refused (or aborted), never stored
    assert not [p for p in node.data_dir.parent.rglob("passwd")]
    assert not [p for p in spool_files(node) if "etc" in p.parts or ".." in str(p)]
    assert_healthy(node)


def test_huge_declared_dimensions_with_little_data(node: NodeProcess) -> None:
    dataset = copy.deepcopy(CT)
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.903"
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.903.1"
    dataset.Rows = dataset.Columns = 65535
    dataset.NumberOfFrames = 10000
    dataset.PixelData = b"\x00" * 64
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, dataset.SOPInstanceUID, encoded_dataset(dataset)):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status == 0x0000  # the receiver stores bytes; it never decodes pixels
    study = node.wait_for_study(dataset.StudyInstanceUID, {"done", "failed"}, timeout=120)
    assert study["state"] == "failed" and "pixels" in study["reason"], study
    assert_healthy(node)


@pytest.mark.parametrize("depth", [40, 3000])
def test_deeply_nested_sequences(node: NodeProcess, depth: int) -> None:
    study_uid = f"1.2.826.0.1.3680043.8.498.904.{depth}"
    dataset = copy.deepcopy(CT)
    dataset.StudyInstanceUID = study_uid
    dataset.SOPInstanceUID = f"{study_uid}.1"
    data = encoded_dataset(dataset)
    # The nested (0008,1115) goes before Patient's Name, so before the Study Instance UID.
    position = data.find(b"\x10\x00\x10\x00")
    data = data[:position] + nested_sequence(depth) + data[position:]
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, dataset.SOPInstanceUID, data):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status is not None
    if status == 0x0000:  # stored as received: the worker refuses it with a reason
        study = node.wait_for_study(study_uid, {"done", "failed"}, timeout=120)
        assert study["state"] == "failed" and "nest" in study["reason"], study
    else:
        assert status in (0xC210, 0xC211)
    assert_healthy(node)


def test_invalid_vr_and_deflated_bytes(node: NodeProcess) -> None:
    data = bytearray(CT_BYTES)
    position = data.find(b"\x08\x00\x08\x00CS")  # Image Type
    data[position + 4 : position + 6] = b"ZZ"
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, str(CT.SOPInstanceUID), bytes(data)):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status is None or status in (0x0000, 0xC210, 0xC211)
    if status == 0x0000:  # stored as received: processing counts it as unreadable, the worker carries on
        study = node.wait_for_study(str(CT.StudyInstanceUID), {"done", "failed"}, timeout=120)
        assert "internal error" not in study["reason"], study
    deflated = zlib.compress(CT_BYTES * 200)  # labelled explicit VR little endian: not inflated, not parsed
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.905", deflated):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status is None or status in (0xC210, 0xC211)
    assert "1.2.826.0.1.3680043.8.498.905" not in str(node.status())
    assert_healthy(node)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.tuples(st.integers(0, len(CT_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    truncate=st.one_of(st.none(), st.integers(0, len(CT_BYTES))),
    junk=st.binary(max_size=64),
)
def test_fuzzed_store_requests(
    node: NodeProcess, cuts: list[tuple[int, int]], truncate: int | None, junk: bytes
) -> None:
    data = bytearray(CT_BYTES)
    for position, value in cuts:
        data[position] = value
    payload = bytes(data[:truncate]) + junk if truncate is not None else bytes(data) + junk
    with raw_association(node.port) as (sock, context_id):
        for pdu in store_pdus(context_id, CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.906", payload):
            sock.sendall(pdu)
        status = read_status(sock)
    assert status is None or status in (0x0000, 0xA700, 0xC210, 0xC211, 0xC212, 0xC213)
    assert node.alive()
    assert not [p for p in node.data_dir.rglob(f"*{TMP_MARKER}*")]


def test_node_survived_everything(node: NodeProcess) -> None:
    assert_healthy(node)
    log = node.log()
    # pynetdicom logs its own refusals of malformed DIMSE messages with tracebacks; ours must not appear.
    surprises = [line for line in log.splitlines() if "unexpected error" in line or "loop failed" in line]
    assert not surprises, log[log.find(surprises[0]) :][:4000] if surprises else ""


def test_silent_and_idle_connections_time_out_and_free_their_slots(tmp_path: Path) -> None:
    limits = {"max_associations": 4, "max_associations_per_peer": 4, "acse_timeout_s": 2.0, "network_timeout_s": 3.0}
    with running_node(tmp_path, node=limits) as small:
        silent = [socket.create_connection(("127.0.0.1", small.port)) for _ in range(6)]
        started = time.monotonic()
        try:
            for sock in silent:  # never a word from the peer: closed after the ACSE timeout
                assert closed_or_aborted(sock, timeout=20) == b""
        finally:
            for sock in silent:
                sock.close()
        assert time.monotonic() - started < 20
        assert (
            subprocess.run(
                [require_tool("echoscu"), "-aec", "SAMIE_NODE", "127.0.0.1", str(small.port)], timeout=30
            ).returncode
            == 0
        )
        with raw_association(small.port) as (sock, _):  # associated, then idle: aborted after the network timeout
            started = time.monotonic()
            answer = closed_or_aborted(sock, timeout=20)
        assert answer[:1] in (b"", b"\x07") and time.monotonic() - started < 20
        assert small.alive()
