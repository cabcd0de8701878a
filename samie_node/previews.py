"""PNG previews of what the model saw: the image with the mask outline, for people, never for diagnosis."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def write_previews(previews: Sequence[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    """Write (name, RGB image) pairs as ``folder/overlay-<name>.png``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in previews:
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            continue
        path = folder / f"overlay-{name}.png"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(png.tobytes())
        os.replace(tmp, path)
        paths.append(path)
    return paths
