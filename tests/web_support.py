"""The node's web face for tests: an in-process node without models, HTTP helpers, metrics parsing.

:func:`running_web_node` starts the real listener, spool, audit trail, sender and HTTP server of
``samie-node serve`` in this process, without loading models (no worker), so tests of the console,
``/metrics``, health and STOW-RS take a second, not a model load. Tests that need processing use the
``samie-node serve`` subprocess of :mod:`peers`.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from samie_node.audit import AuditLog
from samie_node.config import Settings, load_settings
from samie_node.encode.seg import AlgorithmInfo
from samie_node.engine.backend import EngineState
from samie_node.engine.models import ModelsInfo
from samie_node.http.server import HttpServer
from samie_node.net.send import Sender
from samie_node.node import Node
from samie_node.spool import TMP_MARKER, Spool
from samie_node.testing.ports import free_port

TOKEN = "test-token-0123456789abcdef"


class DescribedEngine:
    """An engine that holds no models and only describes itself: the web tests process no study."""

    def models_info(self, wait_s: float = 0.0) -> ModelsInfo:
        return ModelsInfo(AlgorithmInfo("LiteMedSAM", "test", "0" * 64), None, "cpu")

    def state(self) -> EngineState:
        return EngineState("local", True, 1, "test engine, no models")


ENGINE = DescribedEngine()


@dataclass
class WebNode:
    node: Node
    settings: Settings
    server: HttpServer

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.http.tls else "http"
        return f"{scheme}://127.0.0.1:{self.settings.http.port}"

    @property
    def data_dir(self) -> Path:
        return self.settings.node.data_dir

    def spool_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "spool").rglob("*") if p.is_file())

    def temp_files(self) -> list[Path]:
        return [p for p in self.data_dir.rglob("*") if TMP_MARKER in p.name]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.data_dir / "audit.jsonl").read_text().splitlines()]


def web_settings(tmp: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a loopback node with the HTTP server on a free port and the test token."""
    base: dict[str, dict[str, Any]] = {
        "node": {"host": "127.0.0.1", "port": free_port(), "data_dir": str(tmp / "data")},
        "http": {"port": free_port(), "token": TOKEN},
        "limits": {"disk_floor_bytes": 0},
        "study": {"quiet_period_s": 3600},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, base)


@contextlib.contextmanager
def running_web_node(tmp: Path, **sections: dict[str, Any]) -> Iterator[WebNode]:
    """The node's listener and HTTP server in this process for the duration of the block (no models)."""
    settings = web_settings(tmp, **sections)
    spool = Spool(settings.node.data_dir, fsync=settings.node.fsync)
    audit = AuditLog(settings.audit_path)
    node = Node(settings, spool=spool, audit=audit, engine=ENGINE)
    server = HttpServer(node, Sender(settings, spool, audit))
    node.servers.append(server)
    node.start()
    try:
        yield WebNode(node, settings, server)
    finally:
        node.stop()
        spool.close()
        audit.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the test reads the 303 and its cookie itself


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    cafile: str | None = None,
) -> Reply:
    """One HTTP request; any status comes back as a :class:`Reply` (no exception for 3xx, 4xx and 5xx)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    context = ssl.create_default_context(cafile=cafile) if cafile is not None else None
    opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=60) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def http_expect_continue(url: str, body: bytes, headers: dict[str, str]) -> tuple[Reply, bool]:
    """A POST that sends its headers with ``Expect: 100-continue`` and its body only when the server asks
    for it (RFC 9110 10.1.1), so a server that answers from the headers alone (413 for a declared length)
    is read instead of racing the upload into a closed socket. A server that says nothing within 5 s gets
    the body anyway, as the RFC allows. Returns the reply and whether the body was sent."""
    parts = urllib.parse.urlsplit(url)
    connection = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        connection.putrequest("POST", parts.path + (f"?{parts.query}" if parts.query else ""))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()
        sock = connection.sock
        assert sock is not None
        readable, _, _ = select.select([sock], [], [], 5.0)
        sent = not readable or sock.recv(12, socket.MSG_PEEK).startswith(b"HTTP/1.1 100")
        if sent:
            connection.send(body)  # getresponse() skips the interim 100 Continue
        response = connection.getresponse()
        return Reply(response.status, dict(response.headers), response.read()), sent
    finally:
        connection.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed with prometheus_client's parser: {(sample name, sorted labels): value}."""
    reply = http("GET", f"{url}/metrics")
    assert reply.status == 200, reply.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
