"""The ``samie-node`` command line: wires settings and objects together and prints; no logic of its own.

Commands by user: :mod:`.node` (serve, echo, status, resend, process, retrieve, demo: the administrator
and the operator) and :mod:`.engine` (enhance, train, evaluate: whoever looks after the models).
"""

from __future__ import annotations

import samie_node.cli.engine
import samie_node.cli.node  # noqa: F401  (each command module registers its commands on ``app``)
from samie_node.cli.common import app

__all__ = ["app"]
