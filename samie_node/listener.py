"""The transport under the receiver: pynetdicom's association server with three gaps closed.

pynetdicom's acceptor is used as it is (its state machine, ACSE and DIMSE), through its public
``AE.make_server(server_class=..., request_handler=...)`` hook, with a request handler that gives each
connection a socket of our own class. That socket:

- bounds what a peer can make us allocate: pynetdicom reads whatever PDU length a peer announces, so a
  header announcing 4 GiB would be honoured. Here a P-DATA-TF PDU longer than the maximum we negotiated,
  or any other PDU over :data:`MAX_CONTROL_PDU_LENGTH`, gets an A-ABORT and the connection is closed;
  so does a dataset whose fragments add up to more than the instance size limit (pynetdicom would
  gather all of it in memory before the C-STORE handler could refuse it);
- reads large blocks with ``recv_into`` into one buffer instead of pynetdicom's 4 KiB ``recv`` calls and
  ``bytearray.extend`` (about 130 calls per 512 KiB CT slice), which is most of the receive cost;
- acknowledges received data at once (``TCP_QUICKACK``, Linux): dcmtk's storescu leaves Nagle's
  algorithm on, and against Linux's delayed ACK about one 512 KiB slice in forty waited 40 ms for its
  last segment;
- for TLS, performs the handshake in the connection's own thread with a timeout, rather than in the
  accept loop, where one silent client would block every other connection.

Association caps (in total and per peer address) are kept by the receiver, which owns the policy.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

LOG = logging.getLogger("samie_node.listener")

#: Largest non-P-DATA PDU accepted (an A-ASSOCIATE-RQ with 128 presentation contexts and extended
#: negotiation is a few tens of KiB).
MAX_CONTROL_PDU_LENGTH = 1024 * 1024

_P_DATA_TF = 0x04
_TCP_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0 means not available
_PDU_TYPES = frozenset(range(0x01, 0x08))


class PduTooLongError(OSError):
    """A peer announced a PDU longer than we accept; the association is aborted."""


class BoundedAssociationSocket(AssociationSocket):
    """An :class:`AssociationSocket` that bounds PDU lengths and reads in large blocks.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (type and length) then ``recv(length)``; this class sees
    the header in the first call and checks the length before the second allocates anything.
    """

    max_p_data_length: int = 16382
    poll_wait_s: float = 0.001
    quickack: bool = False
    max_instance_bytes: int = 2**62
    abort_callback: Callable[[str], None] | None = None
    _pending_type: int | None = None
    _body_type: int | None = None
    _dataset_bytes: int = 0

    @property
    def ready(self) -> bool:
        """True when data can be read; waits up to ``poll_wait_s`` for it instead of returning at once.

        pynetdicom's DUL loop asks ``ready`` and, when nothing is there, sleeps a fixed millisecond before
        asking again. Waiting inside ``select`` instead (with the DUL's own sleep set to zero) costs the
        same when idle but wakes the moment a PDU arrives.
        """
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], self.poll_wait_s)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if nr_bytes != 6 and self._pending_type is not None:
            limit = self.max_p_data_length if self._pending_type == _P_DATA_TF else MAX_CONTROL_PDU_LENGTH
            pdu_type, self._pending_type = self._pending_type, None
            self._body_type = pdu_type
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
            # Linux leaves quick-ACK mode on its own; re-entering it after every read keeps ACKs immediate.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if nr_bytes == 6:
            pdu_type = buffer[0]
            self._pending_type = pdu_type if pdu_type in _PDU_TYPES else None
        elif self._body_type == _P_DATA_TF:
            self._count_dataset_bytes(buffer)
        self._body_type = None
        return buffer

    def _count_dataset_bytes(self, body: bytearray) -> None:
        """Add up the dataset fragments of the message being received; abort above ``max_instance_bytes``.

        pynetdicom gathers a whole dataset in memory before the C-STORE handler sees it, so the instance
        size limit has to act here, while the fragments arrive. Each PDV item is a 4-byte length, the
        presentation context ID and a message control header (bit 0: command, bit 1: last fragment).
        """
        offset = 0
        while offset + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, offset)
            control = body[offset + 5]
            if not control & 0x01:
                self._dataset_bytes += max(item_length - 2, 0)
                if self._dataset_bytes > self.max_instance_bytes:
                    self._abort(f"instance larger than limits.max_instance_bytes ({self.max_instance_bytes} bytes)")
                if control & 0x02:
                    self._dataset_bytes = 0
            offset += 4 + item_length

    def _abort(self, reason: str) -> None:
        LOG.warning("aborting association: %s", reason)
        if self.abort_callback is not None:
            self.abort_callback(reason)
        sock = self.socket
        if sock is not None:
            # A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value).
            with contextlib.suppress(OSError):
                sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06))
        raise PduTooLongError(reason)


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
        if assoc.dul.socket is not None:
            # Same object and state, our recv(); the class adds methods only.
            assoc.dul.socket.__class__ = BoundedAssociationSocket
            sock = cast(BoundedAssociationSocket, assoc.dul.socket)
            sock.max_p_data_length = self.ae.maximum_pdu_size or 2**32 - 1
            server = cast(BoundedAssociationServer, self.server)
            sock.max_instance_bytes = server.max_instance_bytes
            host = str(self.client_address[0])
            sock.abort_callback = lambda reason: server.on_aborted(host, reason)
            assoc.dul._run_loop_delay = 0  # the wait happens in BoundedAssociationSocket.ready
            if sock.socket is not None:
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.quickack = bool(_TCP_QUICKACK) and not isinstance(sock.socket, ssl.SSLSocket)
        return assoc


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server; TLS sockets are wrapped without a handshake in the accept loop."""

    handshake_timeout_s: float = 15.0
    handshake_failed_callback: Any = None
    aborted_callback: Any = None
    max_instance_bytes: int = 2**62

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None  # bound by the constructor
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        return client_socket, address

    def on_handshake_failed(self, host: str, reason: str) -> None:
        if self.handshake_failed_callback is not None:
            self.handshake_failed_callback(host, reason)

    def on_aborted(self, host: str, reason: str) -> None:
        if self.aborted_callback is not None:
            self.aborted_callback(host, reason)


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout_s: float = 15.0,
    handshake_failed_callback: Any = None,
    max_instance_bytes: int = 2**62,
    aborted_callback: Any = None,
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
    server.max_instance_bytes = max_instance_bytes
    server.aborted_callback = aborted_callback
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it again
    thread = threading.Thread(target=server.serve_forever, name=f"listener:{address[1]}", daemon=True)
    thread.start()
    return server
