"""PNG previews of what the model saw: the image with the mask outline, for people, never for diagnosis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from samie_node.files import write_atomically


def write_previews(previews: Sequence[tuple[str, np.ndarray]], folder: Path, *, fsync: bool = True) -> list[Path]:
    """Write (name, RGB image) pairs as ``folder/overlay-<name>.png``; returns the paths written."""
    paths = []
    for name, image in previews:
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            continue
        path = folder / f"overlay-{name}.png"
        write_atomically(path, png.tobytes(), fsync=fsync)
        paths.append(path)
    return paths
