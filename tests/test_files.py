"""The one durable-write helper: a file is absent, as before, or complete; a failure leaves no temp file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from samie_node.files import TMP_MARKER, remove_temp_files, write_atomically


def test_buffers_and_writers_land_whole(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "file.bin"
    write_atomically(target, [b"abc", memoryview(b"def")])
    assert target.read_bytes() == b"abcdef"
    array = np.arange(12).reshape(3, 4)
    write_atomically(target, lambda stream: np.save(stream, array))
    assert np.array_equal(np.load(target), array)
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_atomically(target, b"old")

    def broken(stream: BinaryIO) -> None:
        stream.write(b"half of the new")
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        write_atomically(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_leftovers_of_a_crash_are_found_and_removed(tmp_path: Path) -> None:
    keep = tmp_path / "a" / "keep.dcm"
    keep.parent.mkdir()
    keep.write_bytes(b"whole")
    leftovers = [tmp_path / "a" / f"keep.dcm{TMP_MARKER}1-2", tmp_path / f"overlay.png{TMP_MARKER}{os.getpid()}-9"]
    for path in leftovers:
        path.write_bytes(b"half")
    assert remove_temp_files(tmp_path) == 2
    assert keep.exists() and not any(path.exists() for path in leftovers)
