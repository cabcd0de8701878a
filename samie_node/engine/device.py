"""Where and in which precision the models run.

The node runs on one device for its whole life: CUDA when present (or when asked for), the CPU otherwise.
Mixed precision is applied with :func:`torch.autocast` around inference only, so weights stay in float32
and a checkpoint written on one device loads on any other.

On a CPU, ``precision = "auto"`` means float32. bf16 is there to ask for: on CPUs with native bf16
(AVX512-BF16, AMX) it is faster, and box-prompted masks agree closely with float32, but in automatic
mode a mask whose stability score sits at a threshold can flip, so results would depend on the CPU a node
runs on; reproducibility wins (``bench/inference.py`` measures both; README, "Measured here"). On CPUs
without native bf16, PyTorch emulates it and it is slower; :func:`cpu_has_native_bf16` tells which kind a
machine is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from samie_node.config import EngineSettings
from samie_node.errors import ModelError

_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def select_device(settings: EngineSettings) -> torch.device:
    """Return the device the engine runs on, and apply the thread setting.

    Parameters
    ----------
    settings
        ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``; ``torch_threads``
        > 0 sets the intra-op thread count (0 leaves PyTorch's default, one thread per core).

    Raises
    ------
    ModelError
        If ``cuda`` is requested and no CUDA device is usable, so the operator learns it at start-up
        rather than from a slow CPU run.
    """
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    if settings.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if settings.device == "cuda":
        raise ModelError("engine.device = 'cuda' but no CUDA device is available")
    return torch.device("cpu")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Return True when the CPU advertises native bf16 arithmetic (AVX512-BF16 or AMX).

    Parameters
    ----------
    cpuinfo
        The Linux CPU description; elsewhere it does not exist and the answer is False (safe: float32).
    """
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_CPU_BF16_FLAGS.intersection(line.split(":", 1)[-1].split()))
    return False


def select_precision(settings: EngineSettings, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for inference on ``device``, or None for plain float32.

    ``auto`` means bf16 on CUDA devices that support it (fp16 on older ones) and float32 on a CPU (see
    the module notes for why).

    Raises
    ------
    ModelError
        If fp16 is requested on the CPU, where PyTorch has no fast fp16 kernels.
    """
    if settings.precision == "fp32":
        return None
    if settings.precision == "bf16":
        return torch.bfloat16
    if settings.precision == "fp16":
        if device.type != "cuda":
            raise ModelError("engine.precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def inference_context(device: torch.device, precision: torch.dtype | None) -> Iterator[None]:
    """Run the enclosed model calls in inference mode, under autocast when ``precision`` is set."""
    with torch.inference_mode():
        if precision is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=precision):
                yield


def describe_device(device: torch.device) -> str:
    """Return a human-readable name of ``device`` (GPU name or CPU model) for logs and benchmarks."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
