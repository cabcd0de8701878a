"""The transport under the receiver: pynetdicom's association server, bounded and made prompt.

pynetdicom's acceptor is used as it is (its state machine, ACSE and DIMSE), through its public
``AE.make_server(server_class=..., request_handler=...)`` hook, with a request handler that gives each
connection a socket of our own class. That socket:

- bounds what a peer can make us allocate: pynetdicom reads whatever PDU length a peer announces, so a
  header announcing 4 GiB would be honoured. Here a P-DATA-TF PDU longer than the maximum we negotiated,
  or any other PDU over :data:`MAX_CONTROL_PDU_LENGTH`, gets an A-ABORT and the connection is closed;
- reads large blocks with ``recv_into`` into one buffer instead of pynetdicom's 4 KiB ``recv`` calls and
  ``bytearray.extend`` (about 130 calls per 512 KiB CT slice);
- acknowledges received data at once (``TCP_QUICKACK``): dcmtk's storescu leaves Nagle's algorithm on,
  and against Linux's delayed ACK about one 512 KiB slice in forty waited 40 ms for its last segment, a
  fifth to a quarter of a one-sender transfer's wall time;
- for TLS, performs the handshake in the connection's own thread with a timeout, rather than in the
  accept loop, where one silent client would block every other connection.

With pynetdicom 3.0.x (another version gets the stock classes and a warning) three more classes are put
in by class swap before the association's threads start, to take fixed waits and slow generic code out
of the request/response round trip. Measured here per 512 KiB slice from one storescu:

- :class:`PromptAssociation`: pynetdicom's association thread sleeps 1 ms before each look at its DIMSE
  queue; this one blocks on the queue (with the same 1 ms bound for release, abort and timeouts), so a
  decoded request reaches its handler in 0.08 ms instead of 0.5 ms;
- :class:`PromptDUL`: the DUL thread noticed a queued response only when its 1 ms socket wait timed
  out; a self-pipe now wakes it at once, and a C-STORE response is written by the association thread
  itself when the DUL thread is idle and nothing is queued ahead (0.05 ms from handler to socket instead
  of 0.2 ms through the wake-up, or 0.5 ms on average before). Received P-DATA-TF PDUs are split into
  views of the receive buffer instead of being copied three times;
- :class:`PromptDIMSE`: a C-STORE request's command set is read with ``struct`` and a C-STORE response
  encoded with it (:func:`c_store_rq_fields`, :func:`encode_c_store_rsp`) instead of through pydicom
  datasets: 0.03 ms instead of about 0.35 ms per response. The primitive is filled through pynetdicom's
  own validating setters and the response bytes are pynetdicom's (the tests compare both).

Each direct path steps aside for pynetdicom's code when a handler observes what it skips (the node binds
none of ``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_DIMSE_RECV``, ``EVT_DIMSE_SENT``, ``EVT_PDU_SENT``,
``EVT_DATA_SENT``, ``EVT_FSM_TRANSITION``) and for anything unusual (a C-MOVE originator in a request, a
failure response with an error comment, TLS for the direct write).

Association caps (in total and per peer address) are kept by the receiver, which owns the policy.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any, cast

import pynetdicom
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

LOG = logging.getLogger("samie_node.listener")

#: Largest non-P-DATA PDU accepted (an A-ASSOCIATE-RQ with 128 presentation contexts and extended
#: negotiation is a few tens of KiB).
MAX_CONTROL_PDU_LENGTH = 1024 * 1024

_P_DATA_TF = 0x04
_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0 means not available
_PDU_TYPES = frozenset(range(0x01, 0x08))


def _pynetdicom_is_supported() -> bool:
    """True for the pynetdicom series whose reactor loop :class:`PromptAssociation` reproduces."""
    return str(pynetdicom.__version__).startswith("3.0.")


class PduTooLongError(OSError):
    """A peer announced a PDU longer than we accept; the association is aborted."""


class BoundedAssociationSocket(AssociationSocket):
    """An :class:`AssociationSocket` that bounds PDU lengths and reads in large blocks.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (type and length) then ``recv(length)``; this class sees
    the header in the first call and checks the length before the second allocates anything.
    """

    max_p_data_length: int = 16382
    poll_wait_s: float = 0.001
    #: Acknowledge received data at once instead of after the kernel's delayed-ACK timer. Senders that
    #: leave Nagle's algorithm on (dcmtk's storescu by default) hold the short last segment of a message
    #: until the previous data is acknowledged; with a delayed ACK that cost about 40 ms on roughly one
    #: instance in forty (a quarter of the wall time of a one-sender transfer, measured here).
    quickack: bool = False
    wakeup: _Wakeup | None = None
    #: Held while the DUL thread enters or leaves its wait in :attr:`ready` and while another thread sends
    #: through :meth:`send_if_idle`; None disables :meth:`send_if_idle`.
    idle_lock: threading.Lock | None = None
    _idle: bool = False
    _pending_type: int | None = None

    @property
    def ready(self) -> bool:
        """True when data can be read; waits up to ``poll_wait_s`` for it instead of returning at once.

        pynetdicom's DUL loop asks ``ready`` and, when nothing is there, sleeps a fixed millisecond before
        asking again. Waiting inside ``select`` instead (with the DUL's own sleep set to zero) costs the
        same when idle but wakes the moment a PDU arrives, or, through :attr:`wakeup`, the moment the
        association thread queues a PDU to send (then this returns False so the DUL loop sends it).
        """
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        wakeup = self.wakeup
        watched: list[Any] = [sock] if wakeup is None else [sock, wakeup]
        lock = self.idle_lock
        if lock is not None:
            with lock:
                self._idle = True
        try:
            readable, _, _ = select.select(watched, [], [], self.poll_wait_s)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        finally:
            if lock is not None:
                with lock:  # waits for a send_if_idle() in progress
                    self._idle = False
        if wakeup is not None and wakeup in readable:
            wakeup.clear()
            return len(readable) > 1
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if nr_bytes != 6 and self._pending_type is not None:
            limit = self.max_p_data_length if self._pending_type == _P_DATA_TF else MAX_CONTROL_PDU_LENGTH
            pdu_type, self._pending_type = self._pending_type, None
            if nr_bytes > limit:
                self._abort(f"PDU type 0x{pdu_type:02X} of {nr_bytes} bytes exceeds the limit of {limit}")
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            count = sock.recv_into(view[read:], nr_bytes - read)
            if count == 0:  # the peer closed the connection: return what arrived, as pynetdicom does
                del view
                return buffer[:read]
            read += count
        del view
        if self.quickack:
            # Linux leaves quick-ACK mode on its own; re-entering it after every read keeps our ACKs
            # immediate (see BoundedAssociationSocket.quickack).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if nr_bytes == 6:
            pdu_type = buffer[0]
            self._pending_type = pdu_type if pdu_type in _PDU_TYPES else None
        return buffer

    def send_if_idle(self, data: bytes, may_send: Callable[[], bool]) -> bool:
        """Send ``data`` from the calling thread if the DUL thread is waiting in :attr:`ready`.

        While the lock is held the DUL thread cannot leave its wait, so it neither sends nor changes its
        state machine meanwhile; ``may_send`` (called under the lock) checks that nothing is queued ahead
        of ``data``. Returns False, having sent nothing, when that is not the case: the caller then
        queues ``data`` for the DUL thread as pynetdicom does. Never used for TLS (see
        :meth:`PromptDUL.send_now`).
        """
        lock = self.idle_lock
        if lock is None or self.socket is None:
            return False
        with lock:
            if not self._idle or not may_send():
                return False
            self.send(data)  # pynetdicom's send: on failure it raises event 17 for the DUL
            return True

    def _abort(self, reason: str) -> None:
        LOG.warning("aborting association: %s", reason)
        sock = self.socket
        if sock is not None:
            # A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value).
            with contextlib.suppress(OSError):
                sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06))
        raise PduTooLongError(reason)


class _Wakeup:
    """A self-pipe that lets one thread interrupt another thread's ``select``.

    The association thread calls :meth:`set` after queueing a PDU; the DUL thread, waiting in ``select``
    on the peer's socket and this object, wakes at once instead of at the end of its poll interval.
    :meth:`close` is called by the DUL thread when it ends; a late :meth:`set` from another thread is
    then a no-op (the lock makes sure it never writes to a descriptor number that was reused).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor ``select`` watches."""
        return self._reader.fileno()

    def set(self) -> None:
        """Wake the waiting thread (cheap; several calls before it wakes cost one wake-up)."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a full buffer means a wake-up is already pending
                self._writer.send(b"\0")

    def clear(self) -> None:
        """Consume pending wake-ups (called by the waiting thread)."""
        with contextlib.suppress(OSError):
            self._reader.recv(4096)

    def close(self) -> None:
        """Release both descriptors."""
        with self._lock:
            self._closed = True
            self._reader.close()
            self._writer.close()


class _ReceivedPData:
    """A received P-DATA-TF PDU, already split; stands in for pynetdicom's ``P_DATA_TF`` in the FSM.

    The state machine's actions for event 10 (DT-2, AR-6) only call ``to_primitive()`` on it.
    """

    __slots__ = ("_values",)

    def __init__(self, values: list[tuple[int, memoryview]]) -> None:
        self._values = values

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # Views, not bytes: DIMSE reads value[0] and writes value[1:] to the message; both work on a view.
        primitive.presentation_data_value_list.extend(self._values)  # type: ignore[arg-type]
        return primitive


def encode_p_data_tf(context_id: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU with one presentation data value (``value`` starts with its control header)."""
    return struct.pack(">BBLLB", _P_DATA_TF, 0, 5 + len(value), 1 + len(value), context_id) + value


def split_p_data(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """Split a P-DATA-TF PDU body (after the 6-byte header) into (context ID, value) views.

    Each item is a 4-byte length, a 1-byte presentation context ID and the value (whose first byte is the
    message control header). Returns None when the items do not tile the body exactly or one is too short
    to hold a control header: the PDU is invalid (PS3.8 9.3.5).
    """
    values: list[tuple[int, memoryview]] = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (item_length,) = struct.unpack_from(">L", body, offset)
        if item_length < 2 or offset + 4 + item_length > end:
            return None
        values.append((body[offset + 4], body[offset + 5 : offset + 4 + item_length]))
        offset += 4 + item_length
    return values if values else None


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL provider, woken by :class:`_Wakeup` when the association thread queues a PDU.

    Installed by class swap on the provider pynetdicom built (it adds behaviour, no state of its own
    beyond :attr:`wakeup`), before its thread starts.
    """

    wakeup: _Wakeup

    def _read_pdu_data(self) -> None:
        """Read one PDU; P-DATA-TF goes straight to the state machine as views of the receive buffer.

        pynetdicom's version copies the PDU to ``bytes``, decodes it into items (another copy each) and
        fires ``EVT_DATA_RECV``/``EVT_PDU_RECV``; with no handler on those events this does the same
        framing and error handling (events 17 and 19 as pynetdicom raises them) without the copies. Other
        PDU types, and every PDU while such a handler is bound, are decoded by pynetdicom's own
        ``_decode_pdu``.
        """
        sock = cast(AssociationSocket, self.socket)
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError) as exc:
            LOG.debug("connection closed before a PDU header arrived: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            LOG.warning("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            LOG.debug("connection closed inside a PDU: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            self.event_queue.put("Evt17")
            return
        observed = self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        if pdu_type == _P_DATA_TF and not observed:
            values = split_p_data(memoryview(body))
            if values is None:
                LOG.warning("invalid P-DATA-TF PDU of %d bytes received", pdu_length)
                self.event_queue.put("Evt19")
                return
            self.event_queue.put("Evt10")
            self._recv_pdu.put(_ReceivedPData(values))  # type: ignore[arg-type]
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:  # pynetdicom's decoders raise many types on malformed input
            LOG.warning("unable to decode a received PDU: %s", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def send_pdu(self, primitive: Any) -> None:
        """Queue ``primitive`` for sending, as pynetdicom does, and wake the DUL thread to send it."""
        super().send_pdu(primitive)
        self.wakeup.set()

    def send_now(self, primitive: P_DATA) -> bool:
        """Send a one-PDV P-DATA-TF PDU from the calling (association) thread; False if not possible now.

        Handing a response to the DUL thread costs a thread wake-up (about 0.15 ms here) on every
        instance. It is skipped when it is safe to: a plain TCP socket (an SSL object must not be used
        from two threads), the state machine in Sta6 (data transfer, where pynetdicom's DT-1 sends the
        PDU and stays in Sta6), nothing queued ahead (no primitive to send, no event to process), no
        handler observing sent PDUs or state transitions, and the DUL thread idle in its wait (see
        :meth:`BoundedAssociationSocket.send_if_idle`). Otherwise the caller queues the primitive.
        """
        sock = self.socket
        if not isinstance(sock, BoundedAssociationSocket) or isinstance(sock.socket, ssl.SSLSocket):
            return False
        if any(self.assoc.get_handlers(e) for e in (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)):
            return False
        [(context_id, value)] = primitive.presentation_data_value_list
        return sock.send_if_idle(encode_p_data_tf(context_id, value), self._may_send_now)

    def _may_send_now(self) -> bool:
        return (
            self.state_machine.current_state == "Sta6"
            and not self.to_provider_queue.queue
            and not self.event_queue.queue
        )

    def run(self) -> None:
        """Run pynetdicom's DUL reactor; release the wake-up descriptors when it ends."""
        try:
            super().run()
        finally:
            self.wakeup.close()


def _uid_value(value: object) -> bytes:
    raw = str(value).encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_c_store_rsp(primitive: C_STORE) -> bytes | None:
    """The command set of a C-STORE response, Implicit VR Little Endian, as pynetdicom encodes it.

    Returns None for a response this does not cover (one carrying an Error Comment or Offending Element,
    which only failures do): pynetdicom encodes those.
    """
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    parts: list[bytes] = []
    if primitive.AffectedSOPClassUID is not None:
        value = _uid_value(primitive.AffectedSOPClassUID)
        parts.append(struct.pack("<HHL", 0x0000, 0x0002, len(value)) + value)
    parts.append(
        struct.pack(
            "<HHLHHHLHHHLHHHLH",
            0x0000, 0x0100, 2, 0x8001,  # Command Field: C-STORE-RSP
            0x0000, 0x0120, 2, int(cast(int, primitive.MessageIDBeingRespondedTo)),
            0x0000, 0x0800, 2, 0x0101,  # Command Data Set Type: no data set
            0x0000, 0x0900, 2, int(cast(int, primitive.Status)),
        )
    )  # fmt: skip
    if primitive.AffectedSOPInstanceUID is not None:
        value = _uid_value(primitive.AffectedSOPInstanceUID)
        parts.append(struct.pack("<HHL", 0x0000, 0x1000, len(value)) + value)
    body = b"".join(parts)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


#: Command elements of a C-STORE-RQ read directly: tag element number -> (primitive attribute, is a UID).
#: Group length, Command Field and Command Data Set Type are read by pynetdicom itself; a command with any
#: other element (a C-MOVE originator, say) is converted by pynetdicom.
_C_STORE_RQ_ELEMENTS: dict[int, tuple[str | None, bool]] = {
    0x0000: (None, False),  # Command Group Length
    0x0002: ("AffectedSOPClassUID", True),
    0x0100: (None, False),  # Command Field
    0x0110: ("MessageID", False),
    0x0700: ("Priority", False),
    0x0800: (None, False),  # Command Data Set Type
    0x1000: ("AffectedSOPInstanceUID", True),
}


def c_store_rq_fields(command: bytes | memoryview) -> dict[str, str | int] | None:
    """The C-STORE-RQ parameters in an encoded command set (Implicit VR Little Endian, group 0000).

    Returns None if the command holds an element not in :data:`_C_STORE_RQ_ELEMENTS`, a US element that is
    not 2 bytes, or does not parse: the caller then lets pynetdicom convert it.
    """
    fields: dict[str, str | int] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        known = _C_STORE_RQ_ELEMENTS.get(element) if group == 0x0000 else None
        if known is None or offset + length > end:
            return None
        name, is_uid = known
        value = command[offset : offset + length]
        offset += length
        if name is None:
            continue
        if is_uid:
            fields[name] = bytes(value).rstrip(b"\x00 ").decode("ascii", "replace")
        elif length == 2:
            fields[name] = struct.unpack("<H", value)[0]
        else:
            return None
    return fields


class _PromptMessage(DIMSEMessage):
    """A DIMSE message being received; once it turns out to be a C-STORE-RQ it becomes
    :class:`_PromptCStoreRQ`. pynetdicom reassigns ``__class__`` itself when the command set is complete,
    so this class re-points it to the subclass right after."""

    def decode_msg(self, primitive: P_DATA, assoc: Association | None = None) -> bool:
        done = super().decode_msg(primitive, assoc)
        if self.__class__ is C_STORE_RQ:  # type: ignore[comparison-overlap]  # pynetdicom reassigned it
            self.__class__ = _PromptCStoreRQ
        return done


class _PromptCStoreRQ(C_STORE_RQ):
    """pynetdicom's C-STORE-RQ message with a direct command-set conversion."""

    def message_to_primitive(self) -> Any:
        """The C-STORE primitive, filled through pynetdicom's own setters (which validate)."""
        self.__class__ = C_STORE_RQ  # type: ignore[assignment]  # pynetdicom keys on the class name
        fields = c_store_rq_fields(self.encoded_command_set.getbuffer())
        if fields is None:
            return C_STORE_RQ.message_to_primitive(self)
        primitive = C_STORE()
        for name, value in fields.items():
            setattr(primitive, name, value)
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


class PromptDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider with C-STORE requests read by :func:`c_store_rq_fields` and C-STORE
    responses encoded by :func:`encode_c_store_rsp`."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Assemble and dispatch a received DIMSE message as pynetdicom does; see :class:`_PromptMessage`."""
        if self.message is None and not self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            message = DIMSEMessage()  # built as pynetdicom builds it (its __init__ keys on the class name)
            message.__class__ = _PromptMessage
            self.message = message
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Send a DIMSE message; a plain C-STORE response skips pynetdicom's dataset encoding."""
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = encode_c_store_rsp(primitive)
            max_pdu = self.maximum_pdu_size
            # One PDV of one PDU, as pynetdicom sends a command that fits (the peer's maximum is at
            # least 4096 in practice; 0 means unlimited).
            if command is not None and (not max_pdu or len(command) + 6 <= max_pdu):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                if not cast(PromptDUL, self.dul).send_now(pdata):
                    self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class PromptAssociation(Association):
    """pynetdicom's acceptor association, whose reactor waits on its DIMSE queue instead of sleeping.

    Installed by class swap before the thread starts (pynetdicom 3.0.x only, see
    :func:`_pynetdicom_is_supported`).
    """

    #: Longest wait for a DIMSE message before the loop checks for release, abort and timeouts; the
    #: stock loop sleeps the same 1 ms between checks, so those are noticed as promptly as before.
    reactor_wait_s: float = 0.001

    def _run_reactor(self) -> None:
        """The acceptor reactor loop of pynetdicom 3.0.4 ``Association._run_reactor``, one change.

        The loop's ``time.sleep(0.001)`` and non-blocking ``dimse.get_msg`` are replaced by one blocking
        ``msg_queue.get`` with a 1 ms timeout: a request is served the moment the DUL thread has decoded
        it. Everything else (the pause checkpoint used by ``send_*`` calls from handlers, release, abort,
        a dead DUL, the network timeout) is pynetdicom's code as it is in 3.0.4.
        """
        self._is_paused = False
        msg_queue = self.dimse.msg_queue
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = msg_queue.get(timeout=self.reactor_wait_s)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOG.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                LOG.debug("association aborted")
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOG.warning("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class _RequestHandler(RequestHandler):
    """Gives each accepted connection a :class:`BoundedAssociationSocket` and TCP_NODELAY."""

    def handle(self) -> None:
        sock = self.request
        if isinstance(sock, ssl.SSLSocket):
            server: BoundedAssociationServer = self.server  # type: ignore[assignment]
            try:
                sock.settimeout(server.handshake_timeout_s)
                sock.do_handshake()
                sock.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                LOG.warning("TLS handshake failed peer=%s: %s", self.client_address[0], exc)
                server.on_handshake_failed(self.client_address[0], str(exc))
                return
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        if sock is not None:
            # Same objects and state, our methods; the classes add behaviour only. Done before either
            # thread starts.
            sock.__class__ = BoundedAssociationSocket
            bounded = cast(BoundedAssociationSocket, sock)
            bounded.max_p_data_length = self.ae.maximum_pdu_size or 2**32 - 1
            assoc.dul._run_loop_delay = 0  # the wait happens in BoundedAssociationSocket.ready
            if sock.socket is not None:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                bounded.quickack = bool(_TCP_QUICKACK)
            if _pynetdicom_is_supported():
                wakeup = _Wakeup()
                assoc.dul.__class__ = PromptDUL
                assoc.dimse.__class__ = PromptDIMSE
                cast(PromptDUL, assoc.dul).wakeup = wakeup
                bounded.wakeup = wakeup
                bounded.idle_lock = threading.Lock()
                assoc.__class__ = PromptAssociation
            else:
                LOG.warning(
                    "pynetdicom %s is not the 3.0 series: using its stock association loop (slower)",
                    pynetdicom.__version__,
                )
        return assoc


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server; TLS sockets are wrapped without a handshake in the accept loop."""

    handshake_timeout_s: float = 15.0
    handshake_failed_callback: Any = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None  # bound by the constructor
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        return client_socket, address

    def on_handshake_failed(self, host: str, reason: str) -> None:
        if self.handshake_failed_callback is not None:
            self.handshake_failed_callback(host, reason)


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout_s: float = 15.0,
    handshake_failed_callback: Any = None,
) -> BoundedAssociationServer:
    """Bind and serve in a daemon thread; returns the server (``shutdown()`` stops it)."""
    server = cast(
        BoundedAssociationServer,
        ae.make_server(
            address,
            ssl_context=ssl_context,
            evt_handlers=evt_handlers,
            server_class=BoundedAssociationServer,
            request_handler=_RequestHandler,
        ),
    )
    server.handshake_timeout_s = handshake_timeout_s
    server.handshake_failed_callback = handshake_failed_callback
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it again
    thread = threading.Thread(target=server.serve_forever, name=f"listener:{address[1]}", daemon=True)
    thread.start()
    return server
