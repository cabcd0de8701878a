"""A small real Storage SCP on loopback: the demo's PACS, and the PACS side of delivery tests.

It is pynetdicom's, keeps what it receives (in memory, and on disk when given a folder), notes when each
study's objects arrived, and answers with a status a test can choose (Orthanc cannot be made to fail on
demand).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


class StoreSCP:
    """Stores datasets; ``status`` decides the C-STORE answer per dataset (Success by default).

    Parameters
    ----------
    port
        Loopback port to listen on.
    ae_title
        Its AE title.
    status
        Returns the status for a received dataset; datasets answered with success or a warning are kept.
    folder
        Also write each kept dataset to ``folder/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.
    """

    def __init__(
        self,
        port: int,
        ae_title: str = "TESTPACS",
        status: Callable[[Dataset], int] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.port = port
        self.ae_title = ae_title
        self.status = status or (lambda ds: 0x0000)
        self.folder = folder
        self.received: list[Dataset] = []
        self.arrivals: dict[str, dict[str, float]] = {}  # study -> {SOP class UID: monotonic time}
        self.calls = 0
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def peer(self) -> str:
        """The SCP as ``AE@HOST:PORT``."""
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def _on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self.calls += 1
            status = self.status(dataset)
            if not (status == 0x0000 or 0xB000 <= status <= 0xBFFF):
                return status
            self.received.append(dataset)
            study = str(dataset.StudyInstanceUID)
            self.arrivals.setdefault(study, {})[str(dataset.SOPClassUID)] = time.monotonic()
        if self.folder is not None:
            path = self.folder / study / f"{dataset.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
        return status

    def start(self) -> StoreSCP:
        """Start listening in the background."""
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, syntaxes)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        """SOP Instance UIDs kept so far, in arrival order."""
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]

    def returned(self, study_instance_uid: str, sop_class_uid: str) -> float | None:
        """When a study's last object arrived, once one of ``sop_class_uid`` and one other had; else None."""
        with self._lock:
            got = self.arrivals.get(study_instance_uid, {})
            return max(got.values()) if sop_class_uid in got and len(got) >= 2 else None
