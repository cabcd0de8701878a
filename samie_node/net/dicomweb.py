"""STOW-RS out (PS3.18 10.5): results to a DICOMweb destination, through ``dicomweb-client``.

One request per delivery round carries every output due for the destination, like one association for
a DIMSE destination. The answer is read per instance: those in the response's Referenced SOP Sequence
are stored; those in its Failed SOP Sequence failed with their Failure Reason, which the caller treats
like a C-STORE status (0xA7xx: retry; anything else: dead letter). A request that fails as a whole
(connection refused, timeout, 5xx, 408, 429) is transient; a refusal of the request (401, 403, other
4xx) is not, because sending the same request again cannot change it: the operator fixes the destination
and re-sends the dead letters.

``dicomweb-client`` retries some statuses on its own; that is switched off so the node's outbox, with
its backoff and cap, is the one place that decides when to try again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from samie_node.config import DicomwebPeer
from samie_node.errors import ConfigError, DeliveryError

#: HTTP statuses after which the same request may succeed later.
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class StowResult:
    """What the destination said about one instance: stored, or the failure reason (a DICOM status)."""

    stored: bool
    failure_reason: int | None = None
    note: str = ""


def _session(peer: DicomwebPeer) -> requests.Session:
    session = requests.Session()
    if peer.username is not None and peer.password is not None:
        session.auth = (peer.username, peer.password)
    token = peer.token
    if peer.token_file is not None:
        try:
            token = peer.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file of {peer.label}: {exc.strerror or exc}") from exc
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    session.verify = str(peer.ca_certificates) if peer.ca_certificates is not None else True
    return session


def client_for(peer: DicomwebPeer, *, timeout_s: float) -> DICOMwebClient:
    """A ``dicomweb-client`` for ``peer`` with its authentication and CA, without its own retries."""
    client = DICOMwebClient(peer.url, session=_session(peer), timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def _response_dataset(response: requests.Response | None) -> Dataset:
    """The STOW response body of a refused request (409 lists the failed instances), or an empty one."""
    if response is None or not response.content:
        return Dataset()
    try:
        return Dataset.from_json(response.json())
    except Exception:  # a body we cannot read (XML, HTML, garbage) tells us nothing more than the status does
        return Dataset()


def _results(response: Dataset, wanted: Sequence[str], *, all_stored: bool) -> dict[str, StowResult]:
    results: dict[str, StowResult] = {}
    for item in response.get("ReferencedSOPSequence", []):
        results[str(item.get("ReferencedSOPInstanceUID", ""))] = StowResult(True)
    for item in response.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        results[str(item.get("ReferencedSOPInstanceUID", ""))] = StowResult(
            False, int(reason) if reason is not None else 0x0110, "refused by the destination"
        )
    missing = StowResult(all_stored, None if all_stored else 0x0110, "" if all_stored else "not in the response")
    return {uid: results.get(uid, missing) for uid in wanted}


def stow(peer: DicomwebPeer, datasets: Sequence[Dataset], *, timeout_s: float) -> dict[str, StowResult]:
    """Store ``datasets`` at ``peer`` in one STOW-RS request; returns a result per SOP Instance UID.

    Raises
    ------
    DeliveryError
        When the request fails as a whole (``transient`` says whether a retry may help).
    """
    wanted = [str(ds.SOPInstanceUID) for ds in datasets]
    try:
        response = client_for(peer, timeout_s=timeout_s).store_instances(list(datasets))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 409:  # none stored; the body says why, per instance
            return _results(_response_dataset(exc.response), wanted, all_stored=False)
        raise DeliveryError(
            f"{peer.label} answered STOW-RS with HTTP {status}", transient=status in _TRANSIENT_HTTP
        ) from exc
    except requests.RequestException as exc:
        raise DeliveryError(f"cannot reach {peer.label}: {type(exc).__name__}", transient=True) from exc
    return _results(response, wanted, all_stored=True)
