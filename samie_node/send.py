"""Talking to peers as an SCU: C-ECHO for the administrator's first check, C-STORE for results.

Every association sets TCP_NODELAY (results to a PACS should not wait on Nagle's algorithm), proposes only
the presentation contexts it needs, and turns every way a peer can fail into a :class:`DeliveryError`
that says whether retrying may help.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from samie_node.config import Peer, Settings
from samie_node.errors import DeliveryError
from samie_node.tls import client_context

LOG = logging.getLogger("samie_node.send")


def _nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def associate(
    peer: Peer,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    calling_ae_title: str,
    timeout_s: float,
) -> Iterator[Association]:
    """Open an association to ``peer`` proposing ``contexts`` (abstract syntax, transfer syntaxes).

    Raises
    ------
    DeliveryError
        transient when the peer cannot be reached, does not answer or rejects transiently; permanent
        when it rejects permanently or accepts none of the proposed contexts.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(transfer_syntaxes))
    tls_args = (client_context(peer.tls), peer.host) if peer.tls is not None else None
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )
    except OSError as exc:
        raise DeliveryError(f"cannot connect to {peer.label}: {exc}", transient=True) from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            result = getattr(assoc.acceptor.primitive, "result", None)
            raise DeliveryError(
                f"{peer.label} rejected the association (result {result})", transient=result != 0x01
            )
        raise DeliveryError(f"{peer.label} did not accept an association (down or aborted)", transient=True)
    try:
        if not assoc.accepted_contexts:
            raise DeliveryError(f"{peer.label} accepted none of the proposed contexts", transient=False)
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def echo(peer: Peer, *, calling_ae_title: str, timeout_s: float = 10.0) -> float:
    """C-ECHO ``peer``; returns the round trip in milliseconds.

    Raises
    ------
    DeliveryError
        If the association fails or the peer answers with a non-success status.
    """
    started = time.monotonic()
    with associate(
        peer, [(Verification, ["1.2.840.10008.1.2"])], calling_ae_title=calling_ae_title, timeout_s=timeout_s
    ) as assoc:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise DeliveryError(f"{peer.label} sent no C-ECHO response", transient=True)
        if status.Status != 0x0000:
            raise DeliveryError(f"{peer.label} answered C-ECHO with 0x{status.Status:04X}", transient=False)
    return (time.monotonic() - started) * 1000


def calling_ae_title(settings: Settings) -> str:
    """The AE title the node uses when it calls peers."""
    return settings.send.calling_ae_title or settings.node.ae_title
