"""The one way the node writes a file: whole or not at all, and on stable storage before it is used.

:func:`write_atomically` writes to a temporary name in the target's own folder (``<name>.tmp-<pid>-<thread>``),
fsyncs it, renames it over the target and fsyncs the folder. A crash at any point leaves either the old
file or the new one, never a mix, plus at most a temporary file that :func:`remove_temp_files` (called by
the spool's start-up reconciliation) deletes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

#: In the name of every temporary file this module writes, and of no other file.
TMP_MARKER = ".tmp-"

Buffers = bytes | memoryview | Sequence[bytes | memoryview]


def _write_buffers(fd: int, data: Buffers) -> None:
    for part in [data] if isinstance(data, bytes | memoryview) else data:
        view = memoryview(part)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def fsync_folder(folder: Path) -> None:
    """Make a rename or a removal in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(tmp: Path) -> int:
    """Open a new temporary file, creating its folder; again if retention removed the empty folder between."""
    for _attempt in range(3):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        except FileNotFoundError:
            continue
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)


def write_atomically(path: Path, data: Buffers | Callable[[BinaryIO], None], *, fsync: bool = True) -> None:
    """Write ``path`` so that it is absent, as before, or complete.

    Parameters
    ----------
    path
        The target; its folder is created when missing.
    data
        One buffer, several (written one after another), or a function that writes to a binary stream
        (``torch.save``, ``np.savez``).
    fsync
        Flush the file and its folder to stable storage (leave on outside tests of pure logic).

    Raises
    ------
    OSError
        When the write fails; the temporary file is removed and ``path`` is untouched.
    """
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}-{threading.get_ident()}")
    try:
        fd = _create(tmp)
        try:
            if callable(data):
                with os.fdopen(fd, "wb", closefd=False) as stream:
                    data(stream)
            else:
                _write_buffers(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if fsync:
            fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_temp_files(folder: Path) -> int:
    """Delete the temporary files an interrupted :func:`write_atomically` left under ``folder``."""
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for filename in filenames:
            if TMP_MARKER in filename:
                with contextlib.suppress(OSError):
                    (Path(dirpath) / filename).unlink()
                    removed += 1
    return removed
