"""Pulling studies from a PACS: C-FIND to list them, then C-MOVE (to the node's own listener) or C-GET
(instances arrive on the same association and go straight into the spool).

Either way the retrieved instances land in the spool like pushed ones, so the running node processes
them after the quiet period. Studies are retrieved with bounded concurrency (``max_parallel``) so that a
clinical PACS is not overloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_role, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from samie_node.config import Peer
from samie_node.errors import DeliveryError
from samie_node.net.receive import ACCEPTED_TRANSFER_SYNTAXES
from samie_node.net.send import associate
from samie_node.uids import require_uid

LOG = logging.getLogger("samie_node.net.retrieve")

_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# Storage contexts offered with SCP role on a C-GET association (at most 128 contexts in all).
_GET_STORAGE_CONTEXTS = [str(cx.abstract_syntax) for cx in StoragePresentationContexts if cx.abstract_syntax][:126]


@dataclass(frozen=True)
class StudyMatch:
    """One study a C-FIND found."""

    study_instance_uid: str
    accession_number: str
    study_date: str
    instances: int | None


@dataclass
class RetrieveOutcome:
    """What one study's retrieval did."""

    study_instance_uid: str
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str = ""


def find_studies(
    peer: Peer,
    *,
    calling_ae_title: str,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    since: str | None = None,
    timeout_s: float = 30.0,
) -> list[StudyMatch]:
    """C-FIND at STUDY level (Study Root) by UID, accession number or date range (``since`` = YYYYMMDD).

    Raises
    ------
    DeliveryError
        If the association fails or the PACS answers with a failure status.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = require_uid(study_instance_uid, "Study Instance UID") if study_instance_uid else ""
    query.AccessionNumber = accession_number or ""
    query.StudyDate = f"{since}-" if since else ""
    query.NumberOfStudyRelatedInstances = ""
    matches: list[StudyMatch] = []
    with associate(
        peer,
        [(StudyRootQueryRetrieveInformationModelFind, _UNCOMPRESSED)],
        calling_ae_title=calling_ae_title,
        timeout_s=timeout_s,
    ) as assoc:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise DeliveryError(f"{peer.label} gave no C-FIND response", transient=True)
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                uid = str(identifier.get("StudyInstanceUID", ""))
                count = identifier.get("NumberOfStudyRelatedInstances")
                matches.append(
                    StudyMatch(
                        study_instance_uid=require_uid(uid, "Study Instance UID"),
                        accession_number=str(identifier.get("AccessionNumber", "") or ""),
                        study_date=str(identifier.get("StudyDate", "") or ""),
                        instances=int(count) if count not in (None, "") else None,
                    )
                )
            elif code != 0x0000:
                raise DeliveryError(f"{peer.label} answered C-FIND with 0x{code:04X}", transient=False)
    return matches


def find_study_uids(
    peer: Peer,
    *,
    calling_ae_title: str,
    study_instance_uids: Sequence[str] = (),
    accession_numbers: Sequence[str] = (),
    since: str | None = None,
) -> list[str]:
    """The Study Instance UIDs the PACS has for any of the given UIDs, accession numbers or date, each once,
    in the order found (one C-FIND per UID and accession number, one for the date).

    Raises
    ------
    DeliveryError
        If a C-FIND fails.
    """
    queries: list[tuple[str | None, str | None, str | None]] = [(uid, None, None) for uid in study_instance_uids]
    queries += [(None, number, None) for number in accession_numbers]
    if since:
        queries.append((None, None, since))
    found: dict[str, None] = {}
    for uid, number, date in queries:
        matches = find_studies(
            peer, calling_ae_title=calling_ae_title, study_instance_uid=uid, accession_number=number, since=date
        )
        found.update((match.study_instance_uid, None) for match in matches)
    return list(found)


def _identifier(study_instance_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_instance_uid
    return identifier


def _record(outcome: RetrieveOutcome, status: Dataset | None, peer: Peer) -> bool:
    """Update ``outcome`` from a C-MOVE/C-GET response; True when it was the final one."""
    if not status:
        outcome.error = f"{peer.label} gave no response (timeout or abort)"
        return True
    code = int(status.Status)
    outcome.completed = int(status.get("NumberOfCompletedSuboperations", outcome.completed) or 0)
    outcome.failed = int(status.get("NumberOfFailedSuboperations", outcome.failed) or 0)
    outcome.warning = int(status.get("NumberOfWarningSuboperations", outcome.warning) or 0)
    if code in (0xFF00, 0xFF01):
        return False
    if code not in (0x0000, 0xB000):
        outcome.error = f"{peer.label} answered with 0x{code:04X}"
    return True


def move_study(
    peer: Peer, study_instance_uid: str, *, move_destination: str, calling_ae_title: str, timeout_s: float = 300.0
) -> RetrieveOutcome:
    """C-MOVE one study to ``move_destination`` (the node's AE title, which the PACS must know)."""
    outcome = RetrieveOutcome(study_instance_uid)
    with associate(
        peer,
        [(StudyRootQueryRetrieveInformationModelMove, _UNCOMPRESSED)],
        calling_ae_title=calling_ae_title,
        timeout_s=timeout_s,
    ) as assoc:
        for status, _ in assoc.send_c_move(
            _identifier(study_instance_uid), move_destination, StudyRootQueryRetrieveInformationModelMove
        ):
            if _record(outcome, status, peer):
                break
    return outcome


def get_study(
    peer: Peer,
    study_instance_uid: str,
    *,
    store: Callable[[evt.Event], int],
    calling_ae_title: str,
    timeout_s: float = 300.0,
) -> RetrieveOutcome:
    """C-GET one study; each instance arrives on this association and ``store`` (the receiver's C-STORE
    handler) writes it to the spool and answers its status."""
    outcome = RetrieveOutcome(study_instance_uid)
    contexts: list[tuple[str, Sequence[str]]] = [(StudyRootQueryRetrieveInformationModelGet, _UNCOMPRESSED)]
    contexts += [(uid, list(ACCEPTED_TRANSFER_SYNTAXES)) for uid in _GET_STORAGE_CONTEXTS]
    roles = [build_role(uid, scp_role=True) for uid in _GET_STORAGE_CONTEXTS]
    with associate(
        peer,
        contexts,
        calling_ae_title=calling_ae_title,
        timeout_s=timeout_s,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, store)],
    ) as assoc:
        for status, _ in assoc.send_c_get(_identifier(study_instance_uid), StudyRootQueryRetrieveInformationModelGet):
            if _record(outcome, status, peer):
                break
    return outcome


def retrieve_all(
    study_uids: Sequence[str],
    retrieve_one: Callable[[str], RetrieveOutcome],
    *,
    max_parallel: int = 2,
    on_done: Callable[[RetrieveOutcome], None] | None = None,
) -> list[RetrieveOutcome]:
    """Retrieve studies with at most ``max_parallel`` at a time; one study's failure does not stop others."""

    def run(uid: str) -> RetrieveOutcome:
        try:
            outcome = retrieve_one(uid)
        except DeliveryError as exc:
            outcome = RetrieveOutcome(uid, error=str(exc))
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix="retrieve") as pool:
        return list(pool.map(run, study_uids))


Method = Literal["move", "get"]
