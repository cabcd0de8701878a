"""Builds a :class:`~samie_node.node.Node` from settings: the one place where parts are wired together."""

from __future__ import annotations

import logging

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.encode.templates import load_templates
from samie_node.engine.backend import open_engine
from samie_node.errors import DeliveryError
from samie_node.net.receive import Receiver
from samie_node.net.retrieve import get_study, move_study
from samie_node.net.send import Sender, calling_ae_title
from samie_node.node import Node, Service
from samie_node.retention import Cleaner
from samie_node.spool import Spool
from samie_node.worker import Retriever, Worker

LOG = logging.getLogger("samie_node.runtime")


def build_node(settings: Settings) -> Node:
    """Open the spool and audit trail, open the engine and build the node with its worker, sender, cleaner
    (retention, unless turned off) and (when enabled) its HTTP server.

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
    services: list[Service] = [worker, sender]
    if settings.retention.enabled:
        services.append(Cleaner(settings, spool, audit))
    node = Node(settings, spool=spool, audit=audit, services=services, engine=engine, on_stop=[worker.close])
    worker.retrieve = prompt_retriever(settings, node.receiver)
    if settings.http.enabled:
        from samie_node.http.server import HttpServer

        node.servers.append(HttpServer(node, sender))
    return node


def prompt_retriever(settings: Settings, receiver: Receiver) -> Retriever | None:
    """How the worker fetches a study whose drawings name images the node does not have
    (``prompts.retrieve_from``): C-MOVE to the node's own AE title, or C-GET into the spool through the
    receiver; None when no PACS is configured for it."""
    prompts = settings.prompts
    if prompts.retrieve_from is None:
        return None
    peer = settings.send.peer(prompts.retrieve_from)
    me = calling_ae_title(settings)

    def retrieve(study_instance_uid: str) -> str:
        try:
            if prompts.retrieve_method == "get":
                outcome = get_study(
                    peer,
                    study_instance_uid,
                    store=receiver.handle_store,
                    calling_ae_title=me,
                    timeout_s=prompts.retrieve_timeout_s,
                )
            else:
                outcome = move_study(
                    peer,
                    study_instance_uid,
                    move_destination=settings.node.ae_title,
                    calling_ae_title=me,
                    timeout_s=prompts.retrieve_timeout_s,
                )
        except DeliveryError as exc:
            return str(exc)
        LOG.info(
            "retrieved for drawings study_instance_uid=%s completed=%d failed=%d",
            study_instance_uid,
            outcome.completed,
            outcome.failed,
        )
        return outcome.error or (f"{outcome.failed} instance(s) failed" if outcome.failed else "")

    return retrieve
