"""Builds a :class:`~samie_node.node.Node` from settings: the one place where parts are wired together."""

from __future__ import annotations

import logging

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.encode.templates import load_templates
from samie_node.engine.backend import open_engine
from samie_node.net.send import Sender
from samie_node.node import Node
from samie_node.spool import Spool
from samie_node.worker import Worker

LOG = logging.getLogger("samie_node.runtime")


def build_node(settings: Settings) -> Node:
    """Open the spool and audit trail, open the engine and build the node with its worker, sender and (when
    enabled) its HTTP server.

    The local engine loads its models before the listener starts, so that a wrong checkpoint stops
    ``serve`` with a clear error instead of failing every study later. The Ray engine starts its workers
    in the background: a cluster that is not there yet must not stop the node from receiving.
    """
    templates = load_templates()
    engine = open_engine(settings)
    spool = Spool(settings.node.data_dir, fsync=settings.node.fsync)
    audit = AuditLog.for_settings(settings)
    if not settings.send.destinations and not settings.send.return_to_caller:
        LOG.warning("no destination configured: results are written to %s and not sent", settings.outbox_dir)
    worker = Worker(settings, spool, audit, engine, templates)
    sender = Sender(settings, spool, audit)
    node = Node(settings, spool=spool, audit=audit, services=[worker, sender], engine=engine, on_stop=[worker.close])
    if settings.http.enabled:
        from samie_node.http.server import HttpServer

        node.servers.append(HttpServer(node, sender))
    return node
