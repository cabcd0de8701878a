"""Checks every object the node writes goes through: dciodvfy (dicom3tools) with no errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from peers import require_tool


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error -`` lines dciodvfy prints for a file (warnings are not errors)."""
    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error - ")]


def assert_dciodvfy_clean(path: Path) -> None:
    errors = dciodvfy_errors(path)
    assert errors == [], f"dciodvfy found errors in {path.name}:\n" + "\n".join(errors)
