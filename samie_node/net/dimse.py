"""The bytes of the DICOM upper layer's data messages, written by hand (PS3.8 9.3.5, PS3.7 9 and E).

PDV items of a P-DATA-TF PDU, and the DIMSE command sets of C-ECHO and C-STORE requests and their
responses. The tests compare every encoder here with pynetdicom's, byte for byte.
"""

from __future__ import annotations

import struct

P_DATA_TF_TYPE = 0x04
ABORT_INVALID_PARAMETER = 0x06

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


def split_p_data(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body as (context ID, message control header, fragment view)."""
    items = []
    offset = 0
    end = len(body)
    while offset < end:
        if offset + 6 > end:
            raise ProtocolError("truncated PDV item")
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} does not fit its PDU")
        items.append((body[offset + 4], body[offset + 5], body[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return items


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying a whole command set as its last command fragment."""
    return struct.pack(">BBLLBB", P_DATA_TF_TYPE, 0, len(command) + 6, len(command) + 2, context_id, 0x03) + command


_COMMAND_TAGS = {
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
}


def decode_command(data: bytes | bytearray | memoryview) -> dict[str, str | int]:
    """The elements of a command set (implicit VR little endian, group 0000) the node uses.

    Raises
    ------
    ProtocolError
        If the bytes are not a command set: an element outside group 0000, or lengths that do not fit.
    """
    fields: dict[str, str | int] = {}
    offset = 0
    end = len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("truncated command set element")
        group, element, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise ProtocolError("malformed command set")
        known = _COMMAND_TAGS.get(element)
        if known is not None:
            keyword, vr = known
            value = bytes(data[offset : offset + length])
            if vr == "US":
                if length != 2:
                    raise ProtocolError(f"command element {keyword} has length {length}")
                fields[keyword] = struct.unpack("<H", value)[0]
            else:
                fields[keyword] = value.rstrip(b"\x00 ").decode("ascii", errors="replace")
        offset += length
    if "CommandField" not in fields:
        raise ProtocolError("command set without a Command Field")
    return fields


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def encode_response(
    *, command_field: int, message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """A C-ECHO-RSP or C-STORE-RSP command set, as pynetdicom encodes it (the tests compare them)."""
    body = b"".join(
        (
            _element(0x0002, sop_class_uid.encode("ascii", errors="replace")),
            _element(0x0100, struct.pack("<H", command_field)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", NO_DATASET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, sop_instance_uid.encode("ascii", errors="replace")) if sop_instance_uid else b"",
        )
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body
