"""STOW-RS in (PS3.18 10.5): ``POST /dicomweb/studies`` into the same receiver as C-STORE.

The body (``multipart/related; type="application/dicom"``) is parsed as it streams in
(``python-multipart``'s streaming parser). Each part is a DICOM Part 10 file; once its closing boundary
has arrived, its File Meta gives the SOP Class, SOP Instance and Transfer Syntax UIDs and the dataset
after it goes to :meth:`Receiver.store`, the C-STORE path: the same validation, the same durable write
(temporary file, fsync, rename, index) and the same statuses. Only then is the instance listed as stored
in the response; a refused one is listed in the Failed SOP Sequence with that status as its Failure
Reason (a SOP Instance UID that is not a valid UID is not echoed back).

Limits apply while the body streams: a part that passes ``limits.max_instance_bytes`` stops being kept
(its first bytes stay, to name it) and is refused with 0xC212; a request that passes
``http.max_request_bytes`` (declared or counted) is answered 413 at once. A part cut off by the end of
the body is refused and nothing of it is written. Instances stored before a request was cut off stay
stored, whole, as after an association aborted mid-study; the sender's retry replaces them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from samie_node.errors import InvalidInputError
from samie_node.net.receive import STATUS_CANNOT_PARSE, STATUS_TOO_LARGE, Receiver

_UID = re.compile(r"^[0-9.]{1,64}$")
#: Bytes kept of a part past the instance limit, enough to read its File Meta and name it.
_HEAD = 64 * 1024


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_large: bool = False
    complete: bool = False


class _Parts:
    """Callbacks of the streaming parser: each part's headers and bytes, up to the instance limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.finished: list[_Part] = []
        self.current: _Part | None = None
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.current = _Part()

    def _header_end(self) -> None:
        if self.current is not None:
            self.current.headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        if part is None:
            return
        part.size += end - start
        if part.size > self.limit and not part.too_large:
            part.too_large = True
            del part.data[_HEAD:]
        if not part.too_large:
            part.data.extend(data[start:end])
        elif len(part.data) < _HEAD:
            part.data.extend(data[start : start + _HEAD - len(part.data)])

    def _end(self) -> None:
        if self.current is not None:
            self.current.complete = True
            self.finished.append(self.current)
        self.current = None

    def take(self) -> list[_Part]:
        done, self.finished = self.finished, []
        return done


@dataclass(frozen=True)
class PartResult:
    """One instance's outcome: the DICOM status and the UIDs to name it by (empty when unknown)."""

    status: int
    sop_class_uid: str
    sop_instance_uid: str


def read_file_meta(data: bytes | bytearray) -> tuple[Dataset, int]:
    """The File Meta Information of a Part 10 part and the offset where its dataset starts.

    Tolerant as readers should be: the 128-byte preamble and the ``DICM`` prefix may be missing (pydicom
    writes a dataset that has none that way, and ``dicomweb-client`` sends what pydicom writes); the File
    Meta group itself, with its Transfer Syntax UID, may not.

    Raises
    ------
    InvalidInputError
        If the part has no File Meta, or it is cut off or unreadable.
    """
    if data[128:132] == b"DICM":
        start = 132
    elif data[:4] == b"DICM":
        start = 4
    elif data[:2] == b"\x02\x00":
        start = 0
    else:
        raise InvalidInputError("part is not a DICOM Part 10 file (no File Meta Information)")
    stream = BytesIO(bytes(data[start : start + _HEAD]))
    try:
        meta = read_dataset(
            stream, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, _vr, _length: tag.group != 2
        )
    except Exception as exc:  # pydicom raises many types on malformed input
        raise InvalidInputError(f"File Meta Information cannot be parsed ({type(exc).__name__})") from exc
    if "TransferSyntaxUID" not in meta:
        raise InvalidInputError("File Meta Information without a Transfer Syntax UID")
    return meta, start + stream.tell()


def _uid(meta: Dataset | None, keyword: str) -> str:
    try:
        value = str(meta.get(keyword, "")) if meta is not None else ""
    except Exception:  # a malformed element names nothing
        return ""
    return value if _UID.match(value) else ""


def store_part(receiver: Receiver, part: _Part, host: str) -> PartResult:
    """Hand one part to the receiver (or refuse it as the receiver would); blocking (fsync)."""
    meta: Dataset | None = None
    try:
        meta, offset = read_file_meta(part.data)
    except InvalidInputError as exc:
        problem = str(exc)
    else:
        problem = ""
    media_type = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
    names = (_uid(meta, "MediaStorageSOPClassUID"), _uid(meta, "MediaStorageSOPInstanceUID"))
    if media_type != "application/dicom":
        return PartResult(receiver.refuse(STATUS_CANNOT_PARSE, "part is not application/dicom", "", host, 0), *names)
    if part.too_large:
        reason = "instance larger than limits.max_instance_bytes"
        return PartResult(receiver.refuse(STATUS_TOO_LARGE, reason, "", host, part.size), *names)
    if not part.complete:
        reason = "request ended inside this part"
        return PartResult(receiver.refuse(STATUS_CANNOT_PARSE, reason, "", host, part.size), *names)
    if meta is None:
        return PartResult(receiver.refuse(STATUS_CANNOT_PARSE, problem, "", host, part.size), *names)
    status = receiver.store(
        memoryview(part.data)[offset:],
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
        sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
        calling="",
        host=host,
    )
    return PartResult(status, *names)


def stow_response(results: list[PartResult]) -> Response:
    """The STOW-RS answer (PS3.18 10.5.3): 200 all stored, 202 some, 409 none; DICOM JSON body."""
    answer = Dataset()
    stored, failed = [], []
    for result in results:
        item = Dataset()
        item.ReferencedSOPClassUID = result.sop_class_uid
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        if result.status == 0x0000:
            stored.append(item)
        else:
            item.FailureReason = result.status
            failed.append(item)
    if stored:
        answer.ReferencedSOPSequence = stored
    if failed:
        answer.FailedSOPSequence = failed
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(answer.to_json_dict(), status_code=status, media_type="application/dicom+json")


def _problem(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status)


async def receive_stow(
    request: Request, receiver: Receiver, max_request_bytes: int, max_instance_bytes: int
) -> Response:
    """Parse a STOW-RS request as it streams in and store its instances (authorisation already checked)."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/related":
        return _problem(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    if options.get(b"type", b"application/dicom").lower() != b"application/dicom":
        return _problem(415, "only application/dicom parts are accepted (no metadata and bulk data)")
    boundary = options.get(b"boundary")
    if not boundary:
        return _problem(400, "multipart/related without a boundary")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_request_bytes:
        return _problem(413, f"request larger than http.max_request_bytes ({max_request_bytes})")
    parts = _Parts(max_instance_bytes)
    parser = MultipartParser(boundary, parts.callbacks())
    host = request.client.host if request.client else ""
    results: list[PartResult] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_request_bytes:
                return _problem(413, f"request larger than http.max_request_bytes ({max_request_bytes})")
            parser.write(chunk)
            for part in parts.take():
                results.append(await run_in_threadpool(store_part, receiver, part, host))
    except MultipartParseError:
        pass  # the part being read is refused below as cut off; what came before stands
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read an answer
    if parts.current is not None:
        results.append(await run_in_threadpool(store_part, receiver, parts.current, host))
    if not results:
        return _problem(400, "no instance in the request")
    return stow_response(results)
