"""A real Orthanc on loopback for the benchmarks: its configuration file.

The tests start theirs through ``tests/peers.py``, which also fails a test loudly when Orthanc is missing;
the benchmarks share this one so that each starts the same PACS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ORTHANC_BINARY = "/usr/sbin/Orthanc"


def write_orthanc_config(root: Path, http_port: int, dicom_port: int, **extra: Any) -> Path:
    """Write ``root/orthanc.json`` and return its path.

    Storage and index go under ``root/orthanc``; Orthanc listens on loopback only, as AE title ORTHANC,
    and accepts any called AE title, so a node configured with another name still reaches it. ``extra``
    adds or overrides settings (``Plugins``, ``LuaScripts``, ``DicomModalities``...).
    """
    config: dict[str, Any] = {
        "StorageDirectory": str(root / "orthanc"),
        "IndexDirectory": str(root / "orthanc"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False,
        "Plugins": [],
        **extra,
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path
