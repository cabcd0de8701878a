"""The node's upper layer (:mod:`samie_node.net.listener`): framing, command sets, negotiation, bounds.

The listener frames PDUs, decodes C-STORE/C-ECHO command sets and encodes their responses itself, and
:mod:`samie_node.net.receive` builds the File Meta group itself; each is compared here with what pynetdicom
produces, a full 512 KiB slice sent by dcmtk's storescu and by pynetdicom must be stored byte for byte,
and the protocol's edges (caps, role selection, rejected contexts, unknown PDUs) are driven over loopback.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from peers import require_tool
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]
from raw_dicom import CT_IMAGE_STORAGE, raw_association, store_pdus
from test_receive import CT_SMALL, receiver, scu, spool_files

from samie_node.config import Settings
from samie_node.net.dimse import ProtocolError, decode_command, encode_response, split_p_data
from samie_node.net.listener import CONNECTIONS_PER_ASSOCIATION
from samie_node.testing.sample_studies import ct_series, write_datasets

SOP_INSTANCE_UIDS = ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.11111111111111111111111111111111111111"]


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after its File Meta Information group."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


def test_512k_slice_round_trips_byte_exactly_from_dcmtk_and_pynetdicom(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    datasets, _ = ct_series(slices=2, rows=512, columns=512, seed=7)
    sources = write_datasets(datasets, tmp_path / "in")
    with receiver(tmp_path) as (node, settings):
        subprocess.run(
            [storescu, "-aec", settings.node.ae_title, "127.0.0.1", str(settings.node.port), str(sources[0])],
            check=True,
            timeout=60,
        )
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(sources[1]).Status == 0x0000
        finally:
            assoc.release()
        assert node.stored == 2
        for source, dataset in zip(sources, datasets, strict=True):
            [stored] = (settings.node.data_dir / "spool").rglob(f"{dataset.SOPInstanceUID}.dcm")
            file_meta = create_file_meta(
                sop_class_uid=dataset.SOPClassUID,
                sop_instance_uid=dataset.SOPInstanceUID,
                transfer_syntax=dataset.file_meta.TransferSyntaxUID,
                implementation_uid=node.ae.implementation_class_uid,
                implementation_version=node.ae.implementation_version_name or "",
            )
            expected = b"\x00" * 128 + b"DICM" + encode_file_meta(file_meta) + dataset_bytes(source)
            assert len(expected) > 512 * 1024
            assert stored.read_bytes() == expected


def test_p_data_longer_than_negotiated_gets_abort_and_node_keeps_serving(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_, settings):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert assoc.is_established
        raw = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert raw is not None
        # A P-DATA-TF header announcing one byte more than the node negotiated, and nothing after it.
        raw.sendall(struct.pack(">BBL", 0x04, 0, settings.node.maximum_pdu_length + 1))
        deadline = time.monotonic() + 10
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
        again = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert again.is_established
        assert again.send_c_echo().Status == 0x0000
        again.release()


@pytest.mark.parametrize("sop_instance_uid", SOP_INSTANCE_UIDS)
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC212])
def test_c_store_response_is_encoded_as_pynetdicom_encodes_it(sop_instance_uid: str, status: int) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    ours = encode_response(
        command_field=0x8001,
        message_id=7,
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_instance_uid,
        status=status,
    )
    assert ours == encode(message.command_set, True, True)


def test_c_echo_response_is_encoded_as_pynetdicom_encodes_it() -> None:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 65535
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)
    ours = encode_response(
        command_field=0x8030, message_id=65535, sop_class_uid="1.2.840.10008.1.1", sop_instance_uid="", status=0
    )
    assert ours == encode(message.command_set, True, True)


@pytest.mark.parametrize("sop_instance_uid", SOP_INSTANCE_UIDS)
def test_c_store_request_is_decoded_as_pynetdicom_encoded_it(sop_instance_uid: str) -> None:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = MRImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\x00" * 8)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    fields = decode_command(encode(message.command_set, True, True))
    assert fields == {
        "AffectedSOPClassUID": MRImageStorage,
        "CommandField": 0x0001,
        "MessageID": 12,
        "Priority": 2,
        "CommandDataSetType": 0x0001,
        "AffectedSOPInstanceUID": sop_instance_uid,
    }


@pytest.mark.parametrize(
    "command",
    [
        b"",  # no Command Field
        struct.pack("<HHL", 0x0008, 0x0018, 2) + b"1\x00",  # not group 0000
        struct.pack("<HHL", 0x0000, 0x0100, 40) + b"\x01\x00",  # length past the end
        struct.pack("<HHL", 0x0000, 0x0100, 4) + b"\x01\x00\x00\x00",  # US of 4 bytes
        b"\x00\x00\x00",  # truncated element header
    ],
)
def test_malformed_command_sets_are_protocol_errors(command: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_command(command)


def test_p_data_items_are_split_and_bad_lengths_refused() -> None:
    body = struct.pack(">LBB", 5, 1, 0x03) + b"abc" + struct.pack(">LBB", 3, 3, 0x02) + b"d"
    items = [(cx, control, bytes(fragment)) for cx, control, fragment in split_p_data(memoryview(body))]
    assert items == [(1, 0x03, b"abc"), (3, 0x02, b"d")]
    for bad in (struct.pack(">LBB", 1, 1, 0x03), struct.pack(">LBB", 50, 1, 0x03) + b"abc", b"\x00\x00\x00"):
        with pytest.raises(ProtocolError):
            split_p_data(memoryview(bad))


def test_role_selection_and_rejected_contexts_are_negotiated(tmp_path: Path) -> None:
    ae = AE(ae_title="ROLES")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, DeflatedExplicitVRLittleEndian)  # refused: deflate is unbounded
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    with receiver(tmp_path) as (rx, settings):
        assoc = ae.associate(
            "127.0.0.1",
            settings.node.port,
            ae_title="SAMIE_NODE",
            ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
        )
        assert assoc.is_established
        try:
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
            [rejected] = assoc.rejected_contexts
            assert rejected.abstract_syntax == MRImageStorage
            assert rejected.result == 0x04  # transfer syntaxes not supported
            # Role selection went through pynetdicom's negotiation: the node offers no role reversal, so the
            # requestor keeps the default roles (it stores, the node receives).
            [accepted] = assoc.accepted_contexts
            assert (accepted.as_scu, accepted.as_scp) == (True, False)
            assert assoc.send_c_store(CT_SMALL).Status == 0x0000
        finally:
            assoc.release()
        assert rx.stored == 1


def test_unknown_pdu_type_gets_abort_and_node_carries_on(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_, settings):
        with raw_association(settings.node.port) as (sock, _context_id):
            sock.sendall(struct.pack(">BBL", 0x09, 0, 4) + b"\x00" * 4)
            answer = sock.recv(64)
        assert answer == struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x01)  # A-ABORT, unrecognised PDU
        audit = (settings.node.data_dir / "audit.jsonl").read_text(encoding="utf-8")
        assert '"association_aborted"' in audit and "0x09" in audit
        again = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert again.is_established
        assert again.send_c_echo().Status == 0x0000
        again.release()


def test_a_flood_of_silent_connections_is_capped(tmp_path: Path) -> None:
    with receiver(tmp_path, node={"max_associations": 1, "acse_timeout_s": 30.0}) as (_, settings):
        cap = 1 * CONNECTIONS_PER_ASSOCIATION
        silent = [socket.create_connection(("127.0.0.1", settings.node.port)) for _ in range(cap)]
        time.sleep(0.5)  # accepted, each waiting for its A-ASSOCIATE-RQ
        try:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", settings.node.port)) as extra:
                extra.settimeout(10)
                assert extra.recv(16) == b""  # closed at once, not after the 30 s ACSE timeout
            assert time.monotonic() - started < 5
            audit = (settings.node.data_dir / "audit.jsonl").read_text(encoding="utf-8")
            assert "too many open connections" in audit
        finally:
            for sock in silent:
                sock.close()
        time.sleep(0.5)  # the node sees the closes and frees the connections
        again = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert again.is_established
        assert again.send_c_echo().Status == 0x0000
        again.release()


def _association_request() -> bytes:
    """A valid A-ASSOCIATE-RQ (CT storage and verification) as pynetdicom encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "FUZZ"
    primitive.called_ae_title = "SAMIE_NODE"
    contexts = [build_context(CTImageStorage, ExplicitVRLittleEndian), build_context(Verification)]
    for context_id, context in zip((1, 3), contexts, strict=True):
        context.context_id = context_id
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


ASSOCIATION_REQUEST = _association_request()


@pytest.fixture(scope="module")
def shared_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with receiver(tmp_path_factory.mktemp("fuzz"), node={"acse_timeout_s": 3.0}) as (_, settings):
        yield settings


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(6, len(ASSOCIATION_REQUEST) - 1), st.integers(0, 255)), max_size=6))
def test_fuzzed_association_requests_are_answered_or_aborted(
    shared_receiver: Settings, caplog: pytest.LogCaptureFixture, cuts: list[tuple[int, int]]
) -> None:
    request = bytearray(ASSOCIATION_REQUEST)
    for position, value in cuts:
        request[position] = value
    with socket.create_connection(("127.0.0.1", shared_receiver.node.port)) as sock:
        sock.settimeout(10)
        sock.sendall(request)
        answer = sock.recv(1)
        if answer == b"\x02":  # accepted: release it properly
            sock.sendall(struct.pack(">BBLL", 0x05, 0, 4, 0))
    # A-ASSOCIATE-AC, -RJ, A-ABORT, or (for a request the peer could not have meant) a plain close.
    assert answer in (b"\x02", b"\x03", b"\x07", b"")
    assert not [record for record in caplog.records if "unexpected error" in record.getMessage()]
    if not cuts:
        assert answer == b"\x02"


def test_silence_inside_a_message_is_bounded_by_the_dimse_timeout(tmp_path: Path) -> None:
    with receiver(tmp_path, node={"dimse_timeout_s": 1.0, "network_timeout_s": 30.0}) as (_, settings):
        with raw_association(settings.node.port) as (sock, context_id):
            [command, *_] = store_pdus(context_id, CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.950", b"\x00" * 64)
            sock.sendall(command)  # the dataset the command announces never comes
            started = time.monotonic()
            answer = sock.recv(64)
            waited = time.monotonic() - started
        assert answer[:1] == b"\x07"  # A-ABORT
        assert waited < 10  # the DIMSE timeout (1 s), not the network timeout (30 s)
        assert spool_files(settings) == []
