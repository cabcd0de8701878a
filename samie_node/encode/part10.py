"""A dataset as the bytes of a DICOM Part 10 file (preamble, File Meta, dataset), as the outbox holds it."""

from __future__ import annotations

import io

import pydicom


def encode_file(dataset: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
