"""``python -m samie_node`` runs the command line."""

from samie_node.cli import app

app(prog_name="samie-node")
