"""Talking to peers as an SCU: C-ECHO for the administrator's first check, C-STORE for results.

Every association sets TCP_NODELAY (results to a PACS should not wait on Nagle's algorithm), proposes only
the presentation contexts it needs, and turns every way a peer can fail into a :class:`DeliveryError`
that says whether retrying may help.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from samie_node.audit import AuditLog
from samie_node.config import DicomwebPeer, Peer, Settings
from samie_node.errors import ConfigError, DeliveryError
from samie_node.net.dicomweb import stow
from samie_node.net.tls import client_context
from samie_node.spool import OutputRecord, Spool

LOG = logging.getLogger("samie_node.net.send")

_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[Any] | None = None,
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
            ext_neg=list(ext_neg) if ext_neg else None,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), *(evt_handlers or [])],
        )
    except OSError as exc:
        raise DeliveryError(f"cannot connect to {peer.label}: {exc}", transient=True) from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            result = getattr(assoc.acceptor.primitive, "result", None)
            raise DeliveryError(f"{peer.label} rejected the association (result {result})", transient=result != 0x01)
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
        peer, [(Verification, [ImplicitVRLittleEndian])], calling_ae_title=calling_ae_title, timeout_s=timeout_s
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


#: C-STORE statuses (PS3.4 B.2.3 and PS3.7 C) after which a retry may succeed.
def _is_transient(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF or status in (0x0110, 0xFE00, 0x0213)


def _is_success(status: int) -> bool:
    return status == 0x0000 or status in (0xB000, 0xB006, 0xB007)


class Sender:
    """Delivers queued results (the outbox rows of the index) to their destinations.

    A DICOMweb destination gets one STOW-RS request per round (:mod:`samie_node.net.dicomweb`), whose
    per-instance answers are treated like C-STORE statuses. A DIMSE destination gets one association per
    round, proposing only the SOP classes of the outputs due and the two uncompressed transfer syntaxes
    (the node writes Explicit VR Little Endian). Every status is checked: success and warnings mark the
    output sent; out-of-resources, processing failures, aborted associations, refusals and timeouts are
    retried with exponential backoff up to a cap; anything else, or too many attempts, marks it dead with
    the reason (``samie-node resend`` can re-queue it).

    Parameters
    ----------
    settings
        ``settings.send`` holds destinations, backoff and timeouts.
    spool
        The index holding the outbox.
    audit
        The audit trail.
    clock
        Wall clock for backoff times.
    """

    name = "sender"

    def __init__(
        self, settings: Settings, spool: Spool, audit: AuditLog, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._spool = spool
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()

    def run_once(self) -> bool:
        """Deliver what is due; True if anything was attempted."""
        due = self._spool.due_outputs(limit=500)
        if not due:
            return False
        by_destination: dict[str, list[OutputRecord]] = {}
        for output in due:
            by_destination.setdefault(output.destination, []).append(output)
        for destination, outputs in by_destination.items():
            self.deliver(destination, outputs)
        return True

    def deliver(self, destination: str, outputs: Sequence[OutputRecord]) -> DeliveryCounts:
        """Send ``outputs`` to ``destination`` (one association, or one STOW-RS request) and record each result.

        Outputs already delivered meanwhile are left out: the node's loop and a re-send from the console run
        in one process, one delivery at a time.
        """
        counts = DeliveryCounts()
        with self._lock:
            outputs = self._spool.still_due(outputs)
            if not outputs:
                return counts
            started = time.monotonic()
            try:
                peer = self._settings.send.destination(destination)
            except ConfigError as exc:
                for output in outputs:
                    self._failed(output, str(exc), transient=False, counts=counts)
                return counts
            if isinstance(peer, DicomwebPeer):
                self._deliver_stow(peer, outputs, counts)
            else:
                self._deliver_dimse(peer, outputs, counts)
        LOG.info(
            "delivery to %s: sent=%d retrying=%d dead=%d in %.0f ms",
            destination,
            counts.sent,
            counts.retrying,
            counts.dead,
            (time.monotonic() - started) * 1000,
        )
        self._audit.record(
            "results_sent",
            destination=destination,
            sent=counts.sent,
            retrying=counts.retrying,
            dead=counts.dead,
            studies=sorted({o.study_instance_uid for o in outputs}),
        )
        return counts

    def _read(self, output: OutputRecord, counts: DeliveryCounts) -> Dataset | None:
        """The output's file as a dataset, or None (and a dead letter) when it is missing or not the one queued."""
        try:
            dataset = pydicom.dcmread(output.path)
            if str(dataset.get("SOPInstanceUID", "")) != output.sop_instance_uid or (
                str(dataset.get("SOPClassUID", "")) != output.sop_class_uid
            ):
                raise ValueError("file does not hold the queued instance")
        except Exception as exc:  # a missing or damaged output file cannot get better by waiting
            self._failed(output, f"output file unusable ({type(exc).__name__}: {exc})"[:200], False, counts)
            return None
        return dataset

    def _deliver_dimse(self, peer: Peer, outputs: Sequence[OutputRecord], counts: DeliveryCounts) -> None:
        contexts = [(uid, list(_TRANSFER_SYNTAXES)) for uid in sorted({o.sop_class_uid for o in outputs})]
        pending = list(outputs)
        try:
            with associate(
                peer,
                contexts,
                calling_ae_title=calling_ae_title(self._settings),
                timeout_s=self._settings.send.timeout_s,
            ) as assoc:
                while pending:
                    output = pending[0]
                    dataset = self._read(output, counts)
                    if dataset is None:
                        pending.pop(0)
                        continue
                    response = assoc.send_c_store(dataset)
                    status = int(response.Status) if response and "Status" in response else None
                    if status is None:
                        raise DeliveryError(f"{peer.label} gave no C-STORE response (timeout or abort)", transient=True)
                    pending.pop(0)
                    self._record_status(output, status, f"{peer.label} answered C-STORE", counts)
                    if not assoc.is_established:
                        raise DeliveryError(f"{peer.label} closed the association", transient=True)
        except DeliveryError as exc:
            for output in pending:
                self._failed(output, str(exc), exc.transient, counts)

    def _deliver_stow(self, peer: DicomwebPeer, outputs: Sequence[OutputRecord], counts: DeliveryCounts) -> None:
        readable = [(output, dataset) for output in outputs if (dataset := self._read(output, counts)) is not None]
        if not readable:
            return
        try:
            results = stow(peer, [dataset for _, dataset in readable], timeout_s=self._settings.send.timeout_s)
        except (DeliveryError, ConfigError) as exc:
            transient = exc.transient if isinstance(exc, DeliveryError) else False
            for output, _ in readable:
                self._failed(output, str(exc), transient, counts)
            return
        for output, _ in readable:
            result = results[output.sop_instance_uid]
            status = 0x0000 if result.stored else (result.failure_reason or 0x0110)
            self._record_status(output, status, f"{peer.label} answered STOW-RS ({result.note})", counts)

    def _record_status(self, output: OutputRecord, status: int, what: str, counts: DeliveryCounts) -> None:
        if _is_success(status):
            self._spool.mark_output_sent(output.id)
            counts.sent += 1
            if status != 0:
                LOG.warning("sent with warning 0x%04X sop_instance_uid=%s: %s", status, output.sop_instance_uid, what)
        else:
            self._failed(output, f"{what} with 0x{status:04X}", _is_transient(status), counts)

    def _failed(self, output: OutputRecord, reason: str, transient: bool, counts: DeliveryCounts) -> None:
        send = self._settings.send
        attempts = output.attempts + 1
        retry_at = None
        if transient and attempts < send.max_attempts:
            retry_at = self._clock() + min(send.backoff_initial_s * 2 ** (attempts - 1), send.backoff_max_s)
        state = self._spool.mark_output_failed(output.id, reason, retry_at=retry_at)
        if state == "dead":
            counts.dead += 1
            LOG.error(
                "output dead sop_instance_uid=%s destination=%s: %s",
                output.sop_instance_uid,
                output.destination,
                reason,
            )
        else:
            counts.retrying += 1
            LOG.warning(
                "output retrying sop_instance_uid=%s destination=%s attempt=%d: %s",
                output.sop_instance_uid,
                output.destination,
                attempts,
                reason,
            )


@dataclass
class DeliveryCounts:
    """What one delivery round did."""

    sent: int = 0
    retrying: int = 0
    dead: int = 0


def store_files(peer: Peer, paths: Sequence[Path], *, calling_ae_title: str, timeout_s: float = 30.0) -> None:
    """C-STORE files to ``peer`` over one association (offline processing with ``--destination``).

    Raises
    ------
    DeliveryError
        If the association fails or any file is not stored with success or a warning.
    """
    datasets = [pydicom.dcmread(path) for path in paths]
    contexts = [(uid, list(_TRANSFER_SYNTAXES)) for uid in sorted({str(ds.SOPClassUID) for ds in datasets})]
    with associate(peer, contexts, calling_ae_title=calling_ae_title, timeout_s=timeout_s) as assoc:
        for dataset in datasets:
            response = assoc.send_c_store(dataset)
            status = int(response.Status) if response and "Status" in response else None
            if status is None:
                raise DeliveryError(f"{peer.label} gave no C-STORE response", transient=True)
            if not _is_success(status):
                raise DeliveryError(
                    f"{peer.label} answered C-STORE with 0x{status:04X}", transient=_is_transient(status)
                )
