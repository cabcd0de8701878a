"""Loopback ports for the demo, the tests and the benchmarks: find a free one, wait for a listener."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts connections on ``127.0.0.1:port``.

    Raises
    ------
    RuntimeError
        If ``process`` exits before the port opens.
    TimeoutError
        If nothing listens within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")
