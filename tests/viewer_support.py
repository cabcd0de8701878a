"""The viewer test's parts: OHIF served beside a DICOMweb proxy, the browser driver, and pixel checks.

The OHIF viewer is the prebuilt web app of the npm package ``@ohif/app`` (``tests/viewer/node_modules``,
installed by ``scripts/install-test-peers.sh``), served by ``tests/viewer/serve.mjs`` with ``/dicom-web``
proxied to Orthanc's DICOMweb plugin on the same origin. ``tests/viewer/drive.mjs`` drives Debian's
chromium through playwright-core and reports, with each screenshot, where cornerstone drew the image.
The checks here turn that into pixels: which screen pixels lie over a mask, and whether they carry the
overlay's colour.

A missing part fails loudly (``pytest.fail``): CI installs them all through ``.ci/run``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from peers import REPO, Orthanc, running_orthanc
from PIL import Image

VIEWER_DIR = REPO / "tests" / "viewer"
#: Where the viewer test writes its screenshots (gitignored); the README shows one copied to docs/.
SCREENSHOTS = VIEWER_DIR / "screenshots-latest"
OHIF_DIST = VIEWER_DIR / "node_modules" / "@ohif" / "app" / "dist"
PLAYWRIGHT = VIEWER_DIR / "node_modules" / "playwright-core"
CHROMIUM = "/usr/bin/chromium"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: The colour cornerstone gives the active SR measurement's outline.
SR_OUTLINE_RGB = (0, 255, 0)


def require_viewer_parts(*, browser: bool = True) -> str:
    """The path of ``node``, after checking every part the viewer test needs (the browser and its driver
    only with ``browser``); a loud failure otherwise."""
    install = "run scripts/install-test-peers.sh (the README's `make test` does)"
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js is not installed: the OHIF server and the browser driver need it; {install}")
    missing = [
        f"{what} ({path})"
        for what, path in (
            ("the OHIF viewer build of npm @ohif/app", OHIF_DIST / "index.html"),
            ("npm playwright-core", PLAYWRIGHT / "package.json"),
            ("Debian chromium", Path(CHROMIUM)),
            ("Debian orthanc-dicomweb", Path(DICOMWEB_PLUGIN)),
        )
        if not path.exists() and (browser or what.startswith(("the OHIF", "Debian orthanc")))
    ]
    if missing:
        pytest.fail("the viewer test cannot run without " + ", ".join(missing) + f": {install}")
    return node


def running_dicomweb_orthanc(tmp: Path, **kwargs: Any) -> contextlib.AbstractContextManager[Orthanc]:
    """A running Orthanc with its DICOMweb plugin at ``/dicom-web/``, for the duration of a block."""
    return running_orthanc(tmp, plugins=[DICOMWEB_PLUGIN], **kwargs)


@contextlib.contextmanager
def running_viewer(
    dicomweb_url: str, *, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None
) -> Iterator[str]:
    """``serve.mjs`` for the duration of the block; yields the viewer's URL."""
    node = require_viewer_parts(browser=False)
    log = (log_path or Path(os.devnull)).open("ab")
    process = subprocess.Popen(
        [node, str(VIEWER_DIR / "serve.mjs"), "--host", host, "--port", str(port), "--dicomweb", dicomweb_url],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=VIEWER_DIR,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("viewer listening on "):
            raise RuntimeError(f"the viewer server did not start (exit {process.poll()}): {line!r}")
        yield line.removeprefix("viewer listening on ")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def run_driver(script: str, plan: dict[str, Any], out: Path, *, timeout: float = 900) -> dict[str, Any]:
    """Run a browser driver of ``tests/viewer`` (``drive.mjs``, ``draw.mjs``) on ``plan``; returns its
    ``results.json``, screenshots under ``out``."""
    node = require_viewer_parts()
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps({"out": str(out), "chromium": CHROMIUM, **plan}))
    done = subprocess.run(
        [node, str(VIEWER_DIR / script), str(out / "plan.json")],
        cwd=VIEWER_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (out / f"{Path(script).stem}.log").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{script} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return dict(json.loads((out / "results.json").read_text()))


def drive(url: str, views: Sequence[dict[str, Any]], out: Path, *, timeout: float = 900) -> dict[str, Any]:
    """Run ``drive.mjs`` on ``views`` (see its header); returns its results, screenshots under ``out``."""
    return run_driver("drive.mjs", {"url": url, "views": list(views)}, out, timeout=timeout)


def wait_for_results(orthanc: Orthanc, study_instance_uid: str, timeout: float = 600) -> dict[str, list[bytes]]:
    """The SEG and SR files of a study once both have arrived in Orthanc: ``{"SEG": [...], "SR": [...]}``."""
    deadline = time.monotonic() + timeout
    while True:
        study = orthanc.find_study(study_instance_uid)
        found: dict[str, list[bytes]] = {"SEG": [], "SR": []}
        for series in orthanc.request("GET", f"/studies/{study}/series?expand") if study else []:
            modality = series["MainDicomTags"].get("Modality")
            if modality in found:
                found[modality].extend(orthanc.instance_file(i) for i in series["Instances"])
        if found["SEG"] and found["SR"]:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"SEG {len(found['SEG'])}, SR {len(found['SR'])} of study {study_instance_uid} "
                f"in Orthanc after {timeout} s"
            )
        time.sleep(1)


def load_png(path: Path) -> np.ndarray:
    """A screenshot as an (height, width, 3) uint8 RGB array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class ScreenGeometry:
    """Where an image lies in a screenshot: an affine map from image to screen coordinates.

    Image coordinates are those of cornerstone and DICOM SCOORD: (0, 0) is the top left corner of the
    top left pixel, so pixel (row r, column c) covers [c, c+1) x [r, r+1).
    """

    origin: np.ndarray  # screen (x, y) of image point (0, 0)
    column_step: np.ndarray  # screen displacement for one image column
    row_step: np.ndarray  # screen displacement for one image row
    rows: int
    columns: int
    viewport: tuple[int, int, int, int]  # x, y, width, height on screen
    sop_instance_uid: str
    frame_number: int

    @classmethod
    def from_driver(cls, data: dict[str, Any]) -> ScreenGeometry:
        scale = float(data.get("device_pixel_ratio") or 1.0)
        origin = np.array(data["origin"], dtype=float) * scale
        rows, columns = int(data["rows"]), int(data["columns"])
        x, y, width, height = (float(v) * scale for v in data["viewport"])
        return cls(
            origin=origin,
            column_step=(np.array(data["column_end"], dtype=float) * scale - origin) / columns,
            row_step=(np.array(data["row_end"], dtype=float) * scale - origin) / rows,
            rows=rows,
            columns=columns,
            viewport=(math.ceil(x), math.ceil(y), math.floor(width), math.floor(height)),
            sop_instance_uid=str(data["sop_instance_uid"]),
            frame_number=int(data.get("frame_number") or 1),
        )

    def same_placement(self, other: ScreenGeometry, tolerance: float = 0.01) -> bool:
        """Whether ``other`` shows the same image at the same place on the screen."""
        return (self.sop_instance_uid, self.frame_number, self.rows, self.columns) == (
            other.sop_instance_uid,
            other.frame_number,
            other.rows,
            other.columns,
        ) and all(
            np.allclose(a, b, atol=tolerance)
            for a, b in (
                (self.origin, other.origin),
                (self.column_step, other.column_step),
                (self.row_step, other.row_step),
            )
        )

    @property
    def pixel_size(self) -> float:
        """Screen pixels per image pixel."""
        return float(np.linalg.norm(self.column_step))

    def to_screen(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) image (x, y) points as (n, 2) screen (x, y) points."""
        screen: np.ndarray = self.origin + points[:, :1] * self.column_step + points[:, 1:2] * self.row_step
        return screen

    def image_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every screen pixel of the viewport: its (y, x) and the (row, column) of the image pixel
        under its centre; rows and columns are -1 off the image."""
        x0, y0, width, height = self.viewport
        sy, sx = np.mgrid[y0 : y0 + height, x0 : x0 + width]
        matrix = np.column_stack([self.column_step, self.row_step])
        offsets = np.stack([sx + 0.5 - self.origin[0], sy + 0.5 - self.origin[1]], axis=-1)
        image_xy = offsets @ np.linalg.inv(matrix).T
        columns = np.floor(image_xy[..., 0]).astype(int)
        rows = np.floor(image_xy[..., 1]).astype(int)
        inside = (rows >= 0) & (rows < self.rows) & (columns >= 0) & (columns < self.columns)
        return sy, sx, np.where(inside, rows, -1), np.where(inside, columns, -1)


def overlay_strength(before: np.ndarray, after: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Per pixel, how far ``after`` moved from ``before`` towards ``rgb`` (0: not at all, 1: all the way).

    A segmentation drawn with opacity a over a pixel p gives (1 - a) p + a rgb, so this is a's estimate.
    NaN where ``before`` is already close to ``rgb`` (the pixel cannot show the colour).
    """
    b = before.astype(float)
    towards = np.asarray(rgb, dtype=float) - b
    norm2 = (towards**2).sum(axis=-1)
    strength = ((after.astype(float) - b) * towards).sum(axis=-1) / np.maximum(norm2, 1.0)
    return np.where(norm2 >= 40.0**2, strength, np.nan)


def tinted_pixels(
    before: np.ndarray,
    after: np.ndarray,
    geometry: ScreenGeometry,
    rgb: tuple[int, int, int],
    *,
    min_strength: float = 0.2,
) -> np.ndarray:
    """Where on the image the screen shows the overlay colour: (n, 2) image (x, y) of the centres of the
    image pixels under the screen pixels that moved towards ``rgb`` from ``before`` to ``after`` (one row per
    screen pixel). Empty when the overlay is not drawn, so a check on it fails then."""
    sy, sx, rows, columns = geometry.image_indices()
    strength = overlay_strength(before[sy, sx], after[sy, sx], rgb)
    tinted = (rows >= 0) & (np.nan_to_num(strength) >= min_strength)
    return np.column_stack([columns[tinted] + 0.5, rows[tinted] + 0.5])


@dataclass(frozen=True)
class OverlayCheck:
    """What a screenshot shows of a segmentation overlay, over its mask and far from it."""

    over_region: float  # share of the screen pixels well inside the mask that show the overlay colour
    far_from_region: float  # share of the screen pixels far from the mask that show it
    region_pixels: int
    far_pixels: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_overlay(
    before: np.ndarray,
    after: np.ndarray,
    geometry: ScreenGeometry,
    mask: np.ndarray,
    rgb: tuple[int, int, int],
    *,
    min_over: float = 0.9,
    max_far: float = 0.01,
    min_strength: float = 0.2,
    min_region_pixels: int = 200,
) -> OverlayCheck:
    """Is the overlay colour present over ``mask`` and absent far from it?

    ``before`` and ``after`` are screenshots of the same image (same camera) without and with the
    segmentation; ``mask`` (rows, columns) is where the segmentation should be, in image pixels. A screen
    pixel counts as well inside the mask when the image pixel under it is at least 3 screen pixels (and
    one image pixel) inside the mask's edge, which leaves out the outline drawn on the edge; far from it
    when it is more than 8% of the image size (and 12 screen pixels) outside.
    """
    if mask.shape != (geometry.rows, geometry.columns):
        raise ValueError(f"mask of shape {mask.shape} for an image of {geometry.rows} x {geometry.columns}")
    scale = geometry.pixel_size
    margin_in = max(1, math.ceil(3 / scale))
    margin_far = max(math.ceil(12 / scale), math.ceil(0.08 * min(geometry.rows, geometry.columns)))
    binary = mask.astype(np.uint8)
    inner = cv2.erode(binary, np.ones((2 * margin_in + 1,) * 2, np.uint8)).astype(bool)
    near = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_far + 1,) * 2)).astype(bool)
    sy, sx, rows, columns = geometry.image_indices()
    on_image = rows >= 0
    strength = overlay_strength(before[sy, sx], after[sy, sx], rgb)
    measurable = on_image & ~np.isnan(strength)
    tinted = np.nan_to_num(strength) >= min_strength
    in_region = measurable & inner[rows, columns]
    far = measurable & ~near[rows, columns]
    region_pixels, far_pixels = int(in_region.sum()), int(far.sum())
    over = float(tinted[in_region].mean()) if region_pixels else 0.0
    far_share = float(tinted[far].mean()) if far_pixels else 0.0
    problems = []
    if region_pixels < min_region_pixels:
        problems.append(
            f"the region covers only {region_pixels} measurable screen pixels (at least "
            f"{min_region_pixels} needed): nothing to check on this image"
        )
    elif over < min_over:
        problems.append(
            f"overlay absent over the region: {over:.1%} of {region_pixels} screen pixels show the "
            f"segment colour (at least {min_over:.0%} expected)"
        )
    if far_share > max_far:
        problems.append(
            f"overlay present far from the region: {far_share:.1%} of {far_pixels} screen pixels "
            f"show the segment colour (at most {max_far:.0%} expected)"
        )
    return OverlayCheck(over, far_share, region_pixels, far_pixels, tuple(problems))


def image_contrast(screenshot: np.ndarray, geometry: ScreenGeometry, mask: np.ndarray) -> float:
    """Mean luminance inside ``mask`` minus far outside it, as the screenshot shows the image.

    The generated lesions are much brighter or darker than their surroundings, so a large value confirms
    that the geometry puts the mask where the image content is (the check of the check).
    """
    sy, sx, rows, columns = geometry.image_indices()
    luminance = screenshot[sy, sx].astype(float) @ np.array([0.299, 0.587, 0.114])
    on_image = rows >= 0
    binary = mask.astype(np.uint8)
    inner = cv2.erode(binary, np.ones((5, 5), np.uint8)).astype(bool)
    margin = math.ceil(0.08 * min(geometry.rows, geometry.columns))
    near = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)).astype(bool)
    inside = on_image & inner[np.maximum(rows, 0), np.maximum(columns, 0)]
    outside = on_image & ~near[np.maximum(rows, 0), np.maximum(columns, 0)]
    if not inside.any() or not outside.any():
        return 0.0
    return float(luminance[inside].mean() - luminance[outside].mean())


def outline_drawn(
    screenshot: np.ndarray,
    geometry: ScreenGeometry,
    points: np.ndarray,
    rgb: tuple[int, int, int] = SR_OUTLINE_RGB,
    *,
    tolerance: int = 60,
    radius: int = 2,
) -> float:
    """Share of points sampled along a closed image-space polyline that have ``rgb`` on screen nearby."""
    screen = geometry.to_screen(points.astype(float))
    samples: list[np.ndarray] = []
    for start, end in itertools.pairwise(screen):
        steps = max(1, int(np.linalg.norm(end - start) // 3))
        samples.extend(start + (end - start) * t for t in np.arange(steps) / steps)
    if not samples:
        return 0.0
    close = (np.abs(screenshot.astype(int) - np.asarray(rgb)).max(axis=-1) <= tolerance).astype(np.uint8)
    close = cv2.dilate(close, np.ones((2 * radius + 1,) * 2, np.uint8))
    height, width = close.shape
    hits = [close[int(y), int(x)] for x, y in samples if 0 <= int(x) < width and 0 <= int(y) < height]
    return float(np.mean(hits)) if hits else 0.0


def side_by_side(screenshots: Sequence[Path], viewports: Sequence[Sequence[float]], out: Path, gap: int = 8) -> None:
    """One picture of several screenshots' viewports, left to right (for the README)."""
    crops = []
    for path, (x, y, width, height) in zip(screenshots, viewports, strict=True):
        with Image.open(path) as image:
            crops.append(image.convert("RGB").crop((int(x), int(y), int(x + width), int(y + height))))
    picture = Image.new(
        "RGB", (sum(c.width for c in crops) + gap * (len(crops) - 1), max(c.height for c in crops)), (0, 0, 0)
    )
    left = 0
    for crop in crops:
        picture.paste(crop, (left, 0))
        left += crop.width + gap
    picture.save(out, optimize=True)
