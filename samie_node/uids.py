"""DICOM UIDs: checked before they become path parts, derived deterministically for outputs.

A UID from a peer names folders and files in the spool, so it is validated strictly (PS3.5 9.1:
components of digits separated by dots, no leading zero, at most 64 characters). Anything else, such as
``..``, slashes, letters or an over-long string, is refused before it reaches the file system.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from samie_node.errors import InvalidUidError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

#: Root for UIDs the node derives: the UUID-derived root of PS3.5 B.2 ("2.25.") keeps them globally unique
#: without a registered organisation root.
DERIVED_ROOT = "2.25."


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a conformant DICOM UID string."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.match(value) is not None


def require_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUidError`.

    The message never echoes the value itself beyond its length: a hostile value may be long or carry
    control characters that do not belong in a log.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        value = value.rstrip("\x00 ")
    if not is_valid_uid(value):
        length = len(value) if isinstance(value, str) else 0
        raise InvalidUidError(f"{what} is not a valid DICOM UID (length {length})")
    return str(value)


def derive_uid(*parts: str | Iterable[str]) -> str:
    """Derive a stable UID from the given parts.

    The same parts (source UIDs, model version, output kind) always give the same UID, so re-processing or
    re-sending a study replaces its results in the PACS instead of duplicating them.
    """
    digest = hashlib.sha256()
    for part in parts:
        items = [part] if isinstance(part, str) else sorted(part)
        for item in items:
            digest.update(item.encode("utf-8"))
            digest.update(b"\x00")
        digest.update(b"\x01")
    # 2.25. followed by a 128-bit integer in decimal (at most 39 digits): 44 characters at most.
    return DERIVED_ROOT + str(int.from_bytes(digest.digest()[:16], "big"))
