"""The ``samie-node`` command line: wires settings and objects together, holds no logic of its own."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="samie-node",
    help="A DICOM node that segments studies with Segment Anything (SAM-IE) and returns SEG and SR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- engine commands (enhance, train, evaluate) ---
# --- end engine commands ---
