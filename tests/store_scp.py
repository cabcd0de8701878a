"""A small real Storage SCP (pynetdicom, loopback) that records what it receives and answers with a status
the test chooses: the PACS side of delivery tests where Orthanc cannot be made to fail on demand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


class StoreSCP:
    """Stores datasets in memory; ``status`` decides the C-STORE answer per dataset."""

    def __init__(self, port: int, ae_title: str = "TESTPACS", status: Callable[[Dataset], int] | None = None) -> None:
        self.port = port
        self.ae_title = ae_title
        self.status = status or (lambda ds: 0x0000)
        self.received: list[Dataset] = []
        self.calls = 0
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def peer(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def _on_store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self.calls += 1
            status = self.status(dataset)
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                self.received.append(dataset)
        return status

    def start(self) -> StoreSCP:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]
