"""What every ``samie-node`` command shares: options, logging, settings, the spool, and failing clearly."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from samie_node.config import Settings, load_settings
from samie_node.errors import SamieNodeError
from samie_node.spool import Spool

app = typer.Typer(
    name="samie-node",
    help="A DICOM node that segments studies with Segment Anything (SAM-IE) and returns SEG and SR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (see config/samie-node.toml).")
]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding the spool, outbox and index.")]
EngineOption = Annotated[
    str | None, typer.Option("--engine", help="Where the models run: local (this process) or ray (Ray actors).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="With --engine ray: '' starts Ray here; auto, HOST:PORT or ray://HOST:PORT joins."
    ),
]


def configure_logging(verbose: bool) -> None:
    """Log to stderr; the libraries' own chatter only from warnings up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "pylibjpeg", "openjpeg", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error and return the exit to raise."""
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def settings_from(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings, or a clear exit naming the bad value."""
    try:
        return load_settings(config, overrides)
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc


def data_dir_override(data_dir: Path | None) -> dict[str, Any] | None:
    """``--data-dir`` as a settings override."""
    return {"node": {"data_dir": data_dir}} if data_dir else None


def open_spool(settings: Settings, *, fsync: bool | None = None) -> Spool:
    """The node's spool and index (read-only commands pass ``fsync=False``)."""
    try:
        return Spool(settings.node.data_dir, fsync=settings.node.fsync if fsync is None else fsync)
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc


def counts_table(title: str, rows: list[tuple[str, int]]) -> Table:
    """A two-column table of outcomes and their counts."""
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for label, count in rows:
        table.add_row(label, str(count))
    return table


def engine_overrides(engine: str | None, ray_address: str | None) -> dict[str, Any]:
    """``--engine`` and ``--ray-address`` as settings overrides (``--ray-address`` implies ``--engine ray``)."""
    if engine is not None and engine not in ("local", "ray"):
        raise fail("--engine is local or ray")
    values: dict[str, Any] = {}
    if engine is not None:
        values["backend"] = engine
    if ray_address is not None:
        values["ray_address"] = ray_address
        values.setdefault("backend", "ray")
    return {"engine": values} if values else {}
