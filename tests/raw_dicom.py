"""Raw DICOM upper-layer traffic for hostile-input tests: what a broken or malicious peer can send.

A pynetdicom SCU negotiates the association, then its DUL thread is stopped and the test owns the socket:
it can send P-DATA-TF PDUs built by hand (any length field, any fragmenting, any bytes) and read what the
node answers.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
A_ABORT = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0)


@contextlib.contextmanager
def raw_association(
    port: int, sop_class: str = CT_IMAGE_STORAGE, transfer_syntax: str = EXPLICIT_LE
) -> Iterator[tuple[socket.socket, int]]:
    """An accepted association whose socket the caller drives; yields (socket, context id)."""
    ae = AE(ae_title="HOSTILE")
    ae.requested_contexts = [build_context(sop_class, transfer_syntax)]
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="SAMIE_NODE")
    assert assoc.is_established, "the node did not accept the association"
    context_id = int(assoc.accepted_contexts[0].context_id)
    assoc.dul._kill_thread = True  # stop the SCU's reader: the test reads and writes the socket itself
    time.sleep(0.05)
    sock = assoc.dul.socket.socket
    sock.settimeout(10)
    try:
        yield sock, context_id
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def p_data(context_id: int, fragments: list[tuple[int, bytes]]) -> bytes:
    """A P-DATA-TF PDU; each fragment is (message control header, bytes): bit 0 command, bit 1 last."""
    items = b"".join(struct.pack(">LBB", len(data) + 2, context_id, control) + data for control, data in fragments)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def store_command(sop_class_uid: str, sop_instance_uid: str, message_id: int = 1) -> bytes:
    """An encoded C-STORE-RQ command set (implicit VR little endian, as PS3.7 requires)."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class_uid
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    body = encode(command, True, True)
    group = Dataset()
    group.CommandGroupLength = len(body)
    return bytes(encode(group, True, True)) + bytes(body)


def encoded_dataset(dataset: Dataset) -> bytes:
    """A dataset encoded explicit VR little endian, without file meta."""
    return bytes(encode(dataset, False, True))


def store_pdus(
    context_id: int, sop_class_uid: str, sop_instance_uid: str, data: bytes, chunk: int = 16000
) -> list[bytes]:
    """The PDUs of one C-STORE request: the command, then the dataset in fragments of ``chunk`` bytes."""
    pdus = [p_data(context_id, [(0b11, store_command(sop_class_uid, sop_instance_uid))])]
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    for index, piece in enumerate(pieces):
        pdus.append(p_data(context_id, [(0b10 if index == len(pieces) - 1 else 0b00, piece)]))
    return pdus


def read_status(sock: socket.socket) -> int | None:
    """The Status of the next C-STORE response on ``sock``, or None if the node aborted or closed."""
    header = _read_exactly(sock, 6)
    if header is None or header[0] != 0x04:
        return None
    (length,) = struct.unpack(">L", header[2:6])
    body = _read_exactly(sock, length)
    if body is None:
        return None
    # The response is small: one PDV with the whole command set; find Status (0000,0900) US.
    marker = struct.pack("<HHL", 0x0000, 0x0900, 2)
    position = body.find(marker)
    return None if position < 0 else int(struct.unpack("<H", body[position + 8 : position + 10])[0])


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def nested_sequence(depth: int) -> bytes:
    """(0008,1115) Referenced Series Sequence nested ``depth`` times, undefined lengths, explicit VR LE."""
    opening = struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth
