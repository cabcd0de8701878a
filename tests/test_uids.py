"""UID validation at the file-system boundary and deterministic derivation for outputs."""

from __future__ import annotations

import pytest

from samie_node.errors import InvalidUidError
from samie_node.uids import derive_uid, is_valid_uid, require_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0.1", "2.25.123456789012345678901234567890", "1." + "2" * 62])
def test_valid(uid: str) -> None:
    assert is_valid_uid(uid)
    assert require_uid(uid, "x") == uid


@pytest.mark.parametrize(
    "uid", ["", "1", "..", "1..2", "1.2.", ".1.2", "1.02", "1.2/3", "../etc", "1.2.a", "1." + "2" * 63, "1.2\x00x", 12]
)
def test_invalid(uid: object) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUidError, match="not a valid DICOM UID"):
        require_uid(uid, "Test UID")


def test_trailing_padding_is_tolerated() -> None:
    assert require_uid("1.2.3\x00", "x") == "1.2.3"
    assert require_uid(b"1.2.3 ", "x") == "1.2.3"


def test_derived_uids_are_stable_valid_and_distinct() -> None:
    a = derive_uid("1.2.3", "seg", "model-1")
    assert a == derive_uid("1.2.3", "seg", "model-1")
    assert a != derive_uid("1.2.3", "sr", "model-1")
    assert a != derive_uid("1.2.3", "seg", "model-2")
    assert derive_uid(["1.2", "1.3"]) == derive_uid(["1.3", "1.2"])  # a set of sources, any order
    assert is_valid_uid(a) and a.startswith("2.25.") and len(a) <= 64
