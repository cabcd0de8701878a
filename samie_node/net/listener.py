"""The node's DICOM upper layer on the accepting side: one thread per association, nothing in between.

pynetdicom runs every association as two threads (a DUL reader and an association reactor) that hand
each PDU over through queues polled every millisecond; for a 512 KiB CT slice that hand-over, not the
bytes, is most of the time, and a pynetdicom receiver that discards everything tops out below what this
node must reach with its fsync'd spool (README, "Measured here"). So the accepting side is written here:
each connection is served by one thread that reads a PDU straight into a reused buffer, reassembles the
message and answers it itself. pynetdicom still does what it does well and what is easy to get subtly
wrong: the A-ASSOCIATE-RQ is decoded and the A-ASSOCIATE-AC encoded by its PDU classes, presentation
contexts and SCP/SCU roles are negotiated by its ``negotiate_as_acceptor`` against the contexts of the
receiver's :class:`pynetdicom.AE`. Written by hand (PS3.8 and PS3.7, tested against pynetdicom and
dcmtk byte for byte): the PDU framing, the DIMSE command set of C-ECHO and C-STORE requests and their
responses, A-RELEASE and A-ABORT.

Bounds, each enforced before anything is allocated for it:

- a PDU longer than the maximum we negotiated (P-DATA-TF) or than :data:`MAX_CONTROL_PDU_LENGTH` (any
  other) gets an A-ABORT;
- a command set over :data:`MAX_COMMAND_LENGTH` gets an A-ABORT;
- a dataset whose fragments add up to more than ``max_instance_bytes`` is read to its end and dropped, and
  the C-STORE is answered with the receiver's "too large" status (the sender learns why; nothing stored);
- a peer that says nothing gets closed after the ACSE timeout (before association), or an A-ABORT after
  the DIMSE timeout (in the middle of a message) or the network timeout (between messages); a TLS
  handshake runs in the connection's own thread with the ACSE timeout;
- open connections, associated or not, are capped at :data:`CONNECTIONS_PER_ASSOCIATION` times the
  association cap; a connection over that is closed as soon as it is accepted (a flood of silent sockets
  cannot make a thread each).

Received data are acknowledged at once (``TCP_QUICKACK``, Linux, plain TCP): dcmtk's storescu leaves
Nagle's algorithm on, and against Linux's delayed ACK some slices would otherwise wait a delayed-ACK
interval for their last segment (README, "Measured here", has the ingest figures).

Policy (who may associate, per-peer caps, what a store does) belongs to the :class:`Handlers` the
receiver passes in; this module only speaks the protocol.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from samie_node.net.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    NO_DATASET,
    P_DATA_TF_TYPE,
    ProtocolError,
    decode_command,
    encode_response,
    p_data_tf,
    split_p_data,
)

LOG = logging.getLogger("samie_node.net.listener")

#: Largest non-P-DATA PDU accepted (an A-ASSOCIATE-RQ with 128 presentation contexts and extended
#: negotiation is a few tens of KiB).
MAX_CONTROL_PDU_LENGTH = 1024 * 1024
#: Largest DIMSE command set accepted (a C-STORE-RQ is under 300 bytes).
MAX_COMMAND_LENGTH = 64 * 1024

#: Open connections allowed per association slot (the rest wait in the ACSE timeout or get rejected).
CONNECTIONS_PER_ASSOCIATION = 4

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

A_ASSOCIATE_RQ_TYPE = 0x01
A_ASSOCIATE_RJ_TYPE = 0x03
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07

# A-ABORT provider reasons (PS3.8 9.3.8)
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNISED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02


STATUS_UNRECOGNISED_OPERATION = 0x0211
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122

_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0 means not available

#: A-ASSOCIATE-RJ (result, source, diagnostic) for the rejections this module makes itself.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of an association."""

    calling_ae_title: str
    called_ae_title: str
    host: str


@dataclass
class StoreRequest:
    """One complete C-STORE request as the handler sees it.

    ``data`` is the encoded dataset exactly as received (valid only during the handler call); it is empty
    when ``too_large`` is set, in which case ``size`` says how many bytes were read and dropped.
    """

    peer: Peer
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: memoryview
    size: int
    too_large: bool = False


class Handlers(Protocol):
    """What the listener asks the receiver (the policy and the storage live there)."""

    def on_request(self, peer: Peer) -> tuple[int, int, int] | None:
        """Return an A-ASSOCIATE-RJ (result, source, diagnostic) to reject, or None to accept.

        When it accepts, :meth:`on_closed` is called once the association has ended.
        """

    def on_accepted(self, peer: Peer) -> None: ...

    def on_closed(self, peer: Peer) -> None: ...

    def on_echo(self, peer: Peer) -> int: ...

    def on_store(self, request: StoreRequest) -> int: ...

    def on_aborted(self, host: str, reason: str) -> None:
        """The node aborted an association because the peer broke a bound or the protocol."""

    def on_handshake_failed(self, host: str, reason: str) -> None: ...


@dataclass(frozen=True)
class ListenerSettings:
    """The protocol parameters of one listening port."""

    supported_contexts: list[PresentationContext]
    implementation_class_uid: str
    implementation_version_name: str
    maximum_pdu_length: int
    max_associations: int
    acse_timeout_s: float
    dimse_timeout_s: float
    network_timeout_s: float
    max_instance_bytes: int


class Listener:
    """Accepts connections on one port and serves each association in its own thread."""

    def __init__(
        self,
        address: tuple[str, int],
        settings: ListenerSettings,
        handlers: Handlers,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.handlers = handlers
        self.ssl_context = ssl_context
        self._socket = socket.create_server(address, backlog=128)
        self.server_address: tuple[str, int] = self._socket.getsockname()[:2]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._associations = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"listener:{address[1]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end every open connection."""
        self._stopping.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._socket.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._socket], [], [], 0.2)
                if not readable:
                    continue
                conn, address = self._socket.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                LOG.warning("accept failed: %s", exc)
                continue
            with self._lock:
                crowded = len(self._connections) >= self.settings.max_associations * CONNECTIONS_PER_ASSOCIATION
                if not crowded:
                    self._connections.add(conn)
            if crowded:
                LOG.warning("too many open connections, closing a new one from peer=%s", address[0])
                self.handlers.on_aborted(str(address[0]), "too many open connections")
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            threading.Thread(
                target=self._serve, args=(conn, str(address[0])), name=f"association:{address[0]}", daemon=True
            ).start()

    def _serve(self, conn: socket.socket, host: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                try:
                    conn.settimeout(self.settings.acse_timeout_s)
                    wrapped = self.ssl_context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    LOG.warning("TLS handshake failed peer=%s: %s", host, exc)
                    self.handlers.on_handshake_failed(host, str(exc))
                    return
                with self._lock:
                    self._connections.discard(conn)
                    self._connections.add(wrapped)
                conn = wrapped
            _Association(self, conn, host).run()
        except OSError as exc:  # the peer went away while we answered it
            LOG.info("connection with %s ended: %s", host, exc)
        except Exception:  # one association's failure must never reach the accept loop
            LOG.exception("association with %s ended with an unexpected error", host)
        finally:
            with self._lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def claim_slot(self) -> bool:
        with self._lock:
            if self._associations >= self.settings.max_associations:
                return False
            self._associations += 1
            return True

    def release_slot(self) -> None:
        with self._lock:
            self._associations -= 1


class _Association:
    """One association, from A-ASSOCIATE-RQ to release or abort, in the calling thread."""

    def __init__(self, listener: Listener, sock: socket.socket, host: str) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.handlers = listener.handlers
        self.sock = sock
        self.host = host
        self.quickack = bool(_TCP_QUICKACK) and not isinstance(sock, ssl.SSLSocket)
        self.header = bytearray(6)
        self.body = bytearray(64 * 1024)
        self.contexts: dict[int, PresentationContext] = {}
        self.peer = Peer("", "", host)

    # ------------------------------------------------------------------ PDUs

    def _read_into(self, view: memoryview) -> None:
        read = 0
        size = len(view)
        while read < size:
            count = self.sock.recv_into(view[read:], size - read)
            if count == 0:
                raise ConnectionError("peer closed the connection")
            read += count

    def read_pdu(self) -> tuple[int, memoryview]:
        """Read one PDU; returns its type and a view of its body (valid until the next read)."""
        self._read_into(memoryview(self.header))
        pdu_type, _, length = struct.unpack(">BBL", self.header)
        limit = self.settings.maximum_pdu_length if pdu_type == P_DATA_TF_TYPE else MAX_CONTROL_PDU_LENGTH
        if length > limit:
            raise ProtocolError(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of {limit}")
        if length > len(self.body):
            self.body = bytearray(length)
        view = memoryview(self.body)[:length]
        self._read_into(view)
        if self.quickack:
            # Linux leaves quick-ACK mode on its own; re-entering it after every read keeps ACKs immediate.
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return pdu_type, view

    def send_abort(self, reason: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">BBLBBBB", A_ABORT_TYPE, 0, 4, 0, 0, 0x02, reason))

    def send_reject(self, reason: tuple[int, int, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">BBLBBBB", A_ASSOCIATE_RJ_TYPE, 0, 4, 0, *reason))

    # ------------------------------------------------------------ association

    def run(self) -> None:
        self.sock.settimeout(self.settings.acse_timeout_s)
        try:
            pdu_type, body = self.read_pdu()
        except ProtocolError as exc:
            self._abort(exc)
            return
        except (OSError, ConnectionError):  # silent or gone before asking: nothing to answer
            return
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            self._abort(ProtocolError(f"PDU type 0x{pdu_type:02X} before association", ABORT_UNEXPECTED_PDU))
            return
        try:
            request = A_ASSOCIATE_RQ()
            request.decode(bytes(self.header) + bytes(body))
            primitive = request.to_primitive()
        except Exception as exc:  # pynetdicom raises many types on a malformed request
            self._abort(ProtocolError(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})"))
            return
        self.peer = Peer(str(primitive.calling_ae_title).strip(), str(primitive.called_ae_title).strip(), self.host)
        if not request.protocol_version & 0x01:
            self._reject(REJECT_PROTOCOL_VERSION, "protocol version not supported")
            return
        if str(primitive.application_context_name) != APPLICATION_CONTEXT_NAME:
            self._reject(REJECT_APPLICATION_CONTEXT, "application context name not supported")
            return
        if not self.listener.claim_slot():
            self._reject(REJECT_LOCAL_LIMIT, "association limit reached")
            return
        try:
            refusal = self.handlers.on_request(self.peer)
            if refusal is not None:
                self.send_reject(refusal)
                return
            try:
                try:
                    self._accept(primitive)
                except ProtocolError as exc:
                    self._abort(exc)
                    return
                self.handlers.on_accepted(self.peer)
                self._data_phase()
            finally:
                self.handlers.on_closed(self.peer)
        finally:
            self.listener.release_slot()

    def _reject(self, reason: tuple[int, int, int], why: str) -> None:
        LOG.warning("association rejected peer=%s@%s reason=%s", self.peer.calling_ae_title, self.host, why)
        self.send_reject(reason)

    def _abort(self, error: ProtocolError) -> None:
        LOG.warning("aborting association peer=%s: %s", self.host, error)
        self.handlers.on_aborted(self.host, str(error))
        self.send_abort(error.reason)

    def _accept(self, rq: A_ASSOCIATE) -> None:
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
        }
        try:
            results, role_items = negotiate_as_acceptor(
                rq.presentation_context_definition_list, self.settings.supported_contexts, roles or None
            )
        except Exception as exc:  # a malformed proposal (pynetdicom raises many types)
            raise ProtocolError(f"presentation contexts cannot be negotiated ({type(exc).__name__})") from exc
        self.contexts = {int(cx.context_id): cx for cx in results if cx.result == 0x00 and cx.context_id is not None}
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = self.settings.maximum_pdu_length
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = self.settings.implementation_class_uid
        user_information: list[object] = [maximum, implementation]
        if self.settings.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.settings.implementation_version_name
            user_information.append(version)
        user_information.extend(role_items)
        accept = A_ASSOCIATE()
        accept.application_context_name = APPLICATION_CONTEXT_NAME
        accept.calling_ae_title = rq.calling_ae_title
        accept.called_ae_title = rq.called_ae_title
        accept.result = 0x00
        accept.result_source = 0x01
        accept.presentation_context_definition_results_list = results
        accept.user_information = user_information  # type: ignore[assignment]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(accept)
        self.sock.sendall(pdu.encode())

    def _data_phase(self) -> None:
        message = _Message(self.settings.max_instance_bytes)
        timeout = self.settings.network_timeout_s
        self.sock.settimeout(timeout)
        while True:
            # Silence between messages is bounded by the network timeout, inside one by the DIMSE timeout.
            wanted = self.settings.dimse_timeout_s if message.started else self.settings.network_timeout_s
            if wanted != timeout:
                timeout = wanted
                self.sock.settimeout(timeout)
            try:
                pdu_type, body = self.read_pdu()
                if pdu_type == P_DATA_TF_TYPE:
                    for context_id, control, fragment in split_p_data(body):
                        if message.add(context_id, control, fragment, self.contexts):
                            self._answer(message)
                            message = _Message(self.settings.max_instance_bytes)
                    continue
                if pdu_type == A_RELEASE_RQ_TYPE:
                    self.sock.sendall(struct.pack(">BBLL", A_RELEASE_RP_TYPE, 0, 4, 0))
                    return
                if pdu_type == A_ABORT_TYPE:
                    LOG.info("association aborted by peer=%s@%s", self.peer.calling_ae_title, self.host)
                    return
                reason = ABORT_UNEXPECTED_PDU if 0x01 <= pdu_type <= 0x07 else ABORT_UNRECOGNISED_PDU
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} during the association", reason)
            except ProtocolError as exc:
                self._abort(exc)
                return
            except TimeoutError:
                LOG.warning("association silent for %.0f s, aborting peer=%s", timeout, self.host)
                self.send_abort(ABORT_NOT_SPECIFIED)
                return
            except (OSError, ConnectionError) as exc:
                LOG.info("connection ended peer=%s@%s: %s", self.peer.calling_ae_title, self.host, exc)
                return

    def _answer(self, message: _Message) -> None:
        command = message.command_fields()
        field = int(command["CommandField"])  # decode_command refuses a command set without one
        context = self.contexts[message.context_id]
        if field == C_CANCEL_RQ:
            return  # nothing to cancel: every request here is answered before the next is read
        sop_class = str(command.get("AffectedSOPClassUID", ""))
        status: int
        if field == C_ECHO_RQ:
            status = self.handlers.on_echo(self.peer)
        elif field == C_STORE_RQ and message.has_dataset:
            if sop_class != context.abstract_syntax or sop_class == Verification:
                status = STATUS_SOP_CLASS_NOT_SUPPORTED
            else:
                status = self.handlers.on_store(
                    StoreRequest(
                        peer=self.peer,
                        sop_class_uid=sop_class,
                        sop_instance_uid=str(command.get("AffectedSOPInstanceUID", "")),
                        transfer_syntax_uid=str(context.transfer_syntax[0]),
                        data=memoryview(message.data),
                        size=message.size,
                        too_large=message.too_large,
                    )
                )
        else:
            status = STATUS_UNRECOGNISED_OPERATION
        response = encode_response(
            command_field=field | 0x8000,
            message_id=int(command.get("MessageID", 0)),
            sop_class_uid=sop_class,
            sop_instance_uid=str(command.get("AffectedSOPInstanceUID", "")) if field == C_STORE_RQ else "",
            status=status,
        )
        self.sock.sendall(p_data_tf(message.context_id, response))


class _Message:
    """A DIMSE message being reassembled from PDV fragments: its command set, then its dataset."""

    def __init__(self, max_dataset_bytes: int) -> None:
        self.max_dataset_bytes = max_dataset_bytes
        self.context_id = -1
        self.command = bytearray()
        self.command_done = False
        self.has_dataset = False
        self.data = bytearray()
        self.size = 0
        self.too_large = False
        self._fields: dict[str, str | int] | None = None

    @property
    def started(self) -> bool:
        """True once a fragment of this message has arrived."""
        return self.context_id != -1

    def add(self, context_id: int, control: int, fragment: memoryview, contexts: Mapping[int, object]) -> bool:
        """Take one fragment; returns True when the message is complete."""
        if context_id not in contexts:
            raise ProtocolError(f"presentation context {context_id} was not accepted")
        if self.context_id == -1:
            self.context_id = context_id
        elif context_id != self.context_id:
            raise ProtocolError("a message's fragments came on different presentation contexts")
        last = bool(control & 0x02)
        if control & 0x01:
            if self.command_done:
                raise ProtocolError("command fragment after the command set was complete", ABORT_UNEXPECTED_PDU)
            if len(self.command) + len(fragment) > MAX_COMMAND_LENGTH:
                raise ProtocolError(f"command set longer than {MAX_COMMAND_LENGTH} bytes")
            self.command += fragment
            if not last:
                return False
            self.command_done = True
            fields = self.command_fields()
            self.has_dataset = fields.get("CommandDataSetType", NO_DATASET) != NO_DATASET
            return not self.has_dataset
        if not self.command_done or not self.has_dataset:
            raise ProtocolError("dataset fragment without a command announcing one", ABORT_UNEXPECTED_PDU)
        self.size += len(fragment)
        if self.size > self.max_dataset_bytes:
            if not self.too_large:
                self.too_large = True
                self.data = bytearray()
        else:
            self.data += fragment
        return last

    def command_fields(self) -> dict[str, str | int]:
        if self._fields is None:
            self._fields = decode_command(self.command)
        return self._fields
