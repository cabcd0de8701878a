"""Builds a :class:`~samie_node.node.Node` from settings: the one place where parts are wired together."""

from __future__ import annotations

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.node import Node
from samie_node.spool import Spool


def build_node(settings: Settings) -> Node:
    """Open the spool and audit trail and build the node with its services."""
    spool = Spool(settings.node.data_dir, fsync=settings.node.fsync)
    audit = AuditLog(settings.audit_path if settings.audit.enabled else None)
    return Node(settings, spool=spool, audit=audit, services=[])
