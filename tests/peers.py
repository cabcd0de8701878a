"""Real peers for the tests: the node as a subprocess, Orthanc, dcmtk tools.

Nothing here is a mock. A peer that is missing on the machine fails the test loudly (CI installs them
all through ``.ci/run``); no test skips because a tool is absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from samie_node.testing.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
ORTHANC_BINARY = "/usr/sbin/Orthanc"


def require_tool(name: str) -> str:
    """Path of an executable, or a loud failure naming the package that provides it."""
    # System tools first: pynetdicom installs its own echoscu/storescu into the venv, which must not shadow
    # dcmtk's. Console scripts of pip packages (dciodvfy) are found in the venv after that.
    venv_bin = str(Path(sys.executable).parent)
    system = [
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != Path(venv_bin).resolve()
    ]
    path = shutil.which(name, path=os.pathsep.join([*system, venv_bin])) or (
        name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    )
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test command (it installs dcmtk, orthanc, ...)")
    return path


def toml_value(value: Any) -> str:
    """A value as TOML (enough for the test configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config with the given sections."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class NodeProcess:
    """``samie-node serve`` as a subprocess, as an administrator would run it."""

    def __init__(self, data_dir: Path, port: int, config: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def peer(self) -> str:
        return f"SAMIE_NODE@127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "samie_node", "serve", "--config", str(self.config), "-v"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
        )
        wait_for_port(self.port, timeout, self.process)
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def status(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "samie_node", "status", "--config", str(self.config), "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        return list(json.loads(out.stdout))

    def wait_for_study(self, study_uid: str, states: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for study in self.status():
                if study["study_instance_uid"] == study_uid:
                    last = study
                    if study["state"] in states:
                        return study
            if not self.alive():
                raise RuntimeError("node exited:\n" + self.log()[-3000:])
            time.sleep(0.5)
        raise TimeoutError(f"study not in {states} after {timeout} s; last seen {last}\n{self.log()[-3000:]}")


def node_config(tmp: Path, port: int, **sections: dict[str, Any]) -> Path:
    """A config for a node on loopback with a short quiet period; ``sections`` add or override."""
    base: dict[str, dict[str, Any]] = {
        "node": {"host": "127.0.0.1", "port": port, "data_dir": str(tmp / "data")},
        "study": {"quiet_period_s": 1.0, "poll_interval_s": 0.2},
        "http": {"port": free_port()},  # the default 8765 may be taken by another node on the machine
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return write_config(tmp / "samie-node.toml", base)


@contextlib.contextmanager
def running_node(tmp: Path, **sections: dict[str, Any]) -> Iterator[NodeProcess]:
    """A node subprocess for the duration of the block; its log is printed if the block fails."""
    port = free_port()
    config = node_config(tmp, port, **sections)
    node = NodeProcess(tmp / "data", port, config, tmp / "node.log")
    node.start()
    try:
        yield node
    except BaseException:
        print(node.log()[-5000:])
        raise
    finally:
        node.stop()


class Orthanc:
    """A real Orthanc PACS on loopback ports with a temporary configuration."""

    def __init__(
        self,
        tmp: Path,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        plugins: list[str] | None = None,
        ae_title: str = "ORTHANC",
        extra_config: dict[str, Any] | None = None,
        http_port: int | None = None,
    ) -> None:
        require_tool(ORTHANC_BINARY)
        self.tmp = tmp
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.ae_title = ae_title
        storage = tmp / "orthanc-storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "samie-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(m) for name, m in (modalities or {}).items()},
            "DicomScuTimeout": 30,
            "Plugins": plugins or [],
            "StableAge": 1,
            "HttpTimeout": 60,
            **(extra_config or {}),
        }
        self.config_path = tmp / "orthanc.json"
        self.config_path.write_text(json.dumps(config), encoding="utf-8")
        self.log_path = tmp / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def peer(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(self.config_path)], stdout=log, stderr=log)
        wait_for_port(self.http_port, 60, self.process)
        wait_for_port(self.dicom_port, 60, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def request(
        self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None, timeout: float = 120
    ) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype and raw else raw

    def upload(self, path: Path) -> str:
        """Upload a DICOM file through REST; returns Orthanc's instance ID."""
        return str(self.request("POST", "/instances", path.read_bytes())["ID"])

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": host, "Port": port})

    def store_to(self, modality: str, instance_ids: list[str]) -> Any:
        """Push instances to a modality over DICOM (C-STORE), as a PACS does for a routing rule."""
        return self.request("POST", f"/modalities/{modality}/store", instance_ids)

    def find_study(self, study_instance_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_instance_uid.encode())
        for item in found:
            if item["Type"] == "Study":
                return str(item["ID"])
        return None

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        study_id = self.find_study(study_instance_uid)
        if study_id is None:
            return []
        return list(self.request("GET", f"/studies/{study_id}/instances?expand"))

    def instance_file(self, instance_id: str) -> bytes:
        return bytes(self.request("GET", f"/instances/{instance_id}/file"))


@contextlib.contextmanager
def running_orthanc(tmp: Path, **kwargs: Any) -> Iterator[Orthanc]:
    orthanc = Orthanc(tmp, **kwargs).start()
    try:
        yield orthanc
    except BaseException:
        with contextlib.suppress(OSError):
            print(orthanc.log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        orthanc.stop()


def http_error_text(exc: urllib.error.HTTPError) -> str:
    return exc.read().decode(errors="replace")
