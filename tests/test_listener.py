"""The transport under the receiver: PDU bounds, the prompt reactor and its direct encoders and decoders.

The direct paths in :mod:`samie_node.listener` replace pynetdicom code on every instance, so each is
compared here with what pynetdicom itself produces, and a full 512 KiB slice is sent over loopback by
dcmtk's storescu and by pynetdicom and must be stored byte for byte.
"""

from __future__ import annotations

import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pytest
from peers import require_tool
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from test_receive import receiver, scu

from samie_node.listener import (
    _PromptMessage,
    c_store_rq_fields,
    encode_c_store_rsp,
    encode_p_data_tf,
    split_p_data,
)
from samie_node.sample_studies import ct_series, write_datasets

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


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000, 0xC211])
@pytest.mark.parametrize("sop_instance_uid", SOP_INSTANCE_UIDS)
def test_c_store_response_encoding_matches_pynetdicom(status: int, sop_instance_uid: str) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance_uid
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [pdata] = list(message.encode_msg(1, 16384))
    [(_, value)] = pdata.presentation_data_value_list
    assert value[:1] == b"\x03"
    assert encode_c_store_rsp(rsp) == value[1:]
    assert encode_p_data_tf(1, value) == P_DATA_TF(pdata).encode()  # the PDU the DUL would send


def test_c_store_response_with_error_comment_is_left_to_pynetdicom() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0xC210
    rsp.ErrorComment = "cannot parse"  # type: ignore[assignment]
    assert encode_c_store_rsp(rsp) is None


def c_store_rq_pdata(**extra: object) -> list[P_DATA]:
    """A C-STORE-RQ as pynetdicom sends it: one command PDV and one data PDV."""
    request = C_STORE()
    request.MessageID = 513
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = SOP_INSTANCE_UIDS[2]
    request.Priority = 1
    for name, value in extra.items():
        setattr(request, name, value)
    request.DataSet = BytesIO(b"\x08\x00\x18\x00\x02\x00\x00\x001\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, 16384))


def receive(message: DIMSEMessage, pdatas: list[P_DATA]) -> C_STORE:
    assert [message.decode_msg(pdata) for pdata in pdatas] == [False] * (len(pdatas) - 1) + [True]
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    return primitive


@pytest.mark.parametrize("extra", [{}, {"MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 3}])
def test_c_store_request_conversion_matches_pynetdicom(extra: dict[str, object]) -> None:
    pdatas = c_store_rq_pdata(**extra)
    reference = receive(DIMSEMessage(), pdatas)
    prompt = DIMSEMessage()
    prompt.__class__ = _PromptMessage  # as PromptDIMSE.receive_primitive builds it
    converted = receive(prompt, pdatas)
    assert type(prompt) is C_STORE_RQ  # handed back as pynetdicom's own class
    names = (
        "MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
        "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID",
    )  # fmt: skip
    assert {n: getattr(converted, n) for n in names} == {n: getattr(reference, n) for n in names}
    assert converted.DataSet is not None and reference.DataSet is not None
    assert converted.DataSet.getvalue() == reference.DataSet.getvalue()
    assert converted._context_id == reference._context_id == 1


def test_c_store_request_reader_leaves_unusual_commands_to_pynetdicom() -> None:
    [command_pdata, _] = c_store_rq_pdata(MoveOriginatorApplicationEntityTitle="MOVER")
    command = bytes(command_pdata.presentation_data_value_list[0][1][1:])
    assert c_store_rq_fields(command) is None  # an element it does not read
    [command_pdata, _] = c_store_rq_pdata()
    command = bytes(command_pdata.presentation_data_value_list[0][1][1:])
    assert c_store_rq_fields(command) is not None
    assert c_store_rq_fields(command[:-3]) is None  # truncated


def test_split_p_data_reads_items_and_refuses_malformed_bodies() -> None:
    body = struct.pack(">LB", 4, 1) + b"\x02ab" + struct.pack(">LB", 2, 3) + b"\x03"
    values = split_p_data(memoryview(body))
    assert values is not None
    assert [(context_id, bytes(value)) for context_id, value in values] == [(1, b"\x02ab"), (3, b"\x03")]
    assert split_p_data(memoryview(b"")) is None
    assert split_p_data(memoryview(struct.pack(">LB", 1, 1))) is None  # no room for a control header
    assert split_p_data(memoryview(struct.pack(">LB", 9, 1) + b"\x02ab")) is None  # runs past the PDU
    assert split_p_data(memoryview(body + b"\x00")) is None  # trailing bytes
