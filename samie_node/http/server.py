"""The HTTP server: uvicorn serving the node's application in a thread of the node's process.

The socket is bound here, in the caller's thread, so that a port in use stops ``serve`` with a clear
error instead of a message in a background thread. With ``http.tls`` the server speaks HTTPS with the
certificate and key of ``[node.tls]``. Behind a reverse proxy on the same host, uvicorn trusts the
proxy's ``X-Forwarded-Proto`` from 127.0.0.1, so the Origin check sees the scheme the browser used.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from samie_node.errors import ConfigError
from samie_node.http.app import create_app
from samie_node.net.send import Sender
from samie_node.node import Node


class HttpServer:
    """The console, ``/metrics``, health and STOW-RS, started and stopped with the node."""

    name = "http"

    def __init__(self, node: Node, sender: Sender) -> None:
        self._settings = node.settings
        self.app, self.console = create_app(node, sender)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def _config(self) -> uvicorn.Config:
        tls = self._settings.node.tls
        if self._settings.http.tls and (tls is None or tls.certificate is None or tls.private_key is None):
            raise ConfigError("http.tls needs [node.tls] certificate and private_key")
        return uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(tls.certificate) if self._settings.http.tls and tls and tls.certificate else None,
            ssl_keyfile=str(tls.private_key) if self._settings.http.tls and tls and tls.private_key else None,
        )

    def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound address.

        Raises
        ------
        ConfigError
            If the address cannot be bound or the server does not come up.
        """
        http = self._settings.http
        family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.host, http.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen for HTTP on {http.host}:{http.port}: {exc.strerror or exc}") from exc
        self.address = sock.getsockname()[:2]
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the HTTP server on {http.host}:{http.port} did not start")
            time.sleep(0.02)
        return self.address

    def stop(self) -> None:
        """Stop serving (open requests get a few seconds to finish)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(15)
