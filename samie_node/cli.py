"""The ``samie-node`` command line: wires settings and objects together, holds no logic of its own."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from samie_node.config import Peer, Settings, load_settings
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
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder holding the spool, outbox and index.")
]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "pylibjpeg", "openjpeg", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config, overrides)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="The node's AE title.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DICOM port to listen on.")] = None,
    data_dir: DataDirOption = None,
    destination: Annotated[
        list[str] | None,
        typer.Option("--destination", help="Where results go, AE@HOST:PORT (repeatable)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every instance.")] = False,
) -> None:
    """Run the node: receive studies, process them, send SEG and SR back."""
    _configure_logging(verbose)
    overrides: dict[str, Any] = {"node": {}}
    if ae_title is not None:
        overrides["node"]["ae_title"] = ae_title
    if port is not None:
        overrides["node"]["port"] = port
    if data_dir is not None:
        overrides["node"]["data_dir"] = data_dir
    try:
        if destination:
            overrides["send"] = {"destinations": [Peer.parse(d).model_dump() for d in destination]}
        settings = load_settings(config, overrides)
        from samie_node.runtime import build_node

        node = build_node(settings)
        node.start()
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("samie_node.cli").info("signal %d: stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.wait()


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="The peer to C-ECHO, AE@HOST:PORT.")],
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
) -> None:
    """Check that a peer answers (C-ECHO)."""
    from samie_node.send import calling_ae_title
    from samie_node.send import echo as send_echo

    settings = _settings(config)
    try:
        target = Peer.parse(peer)
        known = {p.label: p for p in settings.send.destinations}
        target = known.get(target.label, target)
        elapsed = send_echo(target, calling_ae_title=calling_ae_title(settings), timeout_s=timeout)
    except SamieNodeError as exc:
        raise _fail(str(exc), code=1) from exc
    Console().print(f"C-ECHO {target.label}: success in {elapsed:.0f} ms")


@app.command()
def status(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show studies, their states and their outputs."""
    settings = _settings(config, {"node": {"data_dir": data_dir}} if data_dir else None)
    try:
        spool = Spool(settings.node.data_dir, fsync=False)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    studies = []
    for study in spool.studies():
        studies.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "state": study.state,
                "instances": study.instances,
                "accession_number": study.accession_number,
                "reason": study.reason,
                "result": study.result,
                "outputs": [
                    {
                        "sop_class_uid": o.sop_class_uid,
                        "sop_instance_uid": o.sop_instance_uid,
                        "destination": o.destination,
                        "state": o.state,
                        "attempts": o.attempts,
                        "last_error": o.last_error,
                    }
                    for o in spool.outputs(study.study_instance_uid)
                ],
            }
        )
    spool.close()
    if as_json:
        typer.echo(json.dumps(studies, indent=2))
        return
    table = Table(title=f"samie-node studies ({settings.node.data_dir})")
    for column in ("Study Instance UID", "State", "Instances", "Outputs sent", "Note"):
        table.add_column(column)
    for study_row in studies:
        outputs = study_row["outputs"]
        sent = sum(1 for o in outputs if o["state"] == "sent")
        table.add_row(
            study_row["study_instance_uid"],
            study_row["state"],
            str(study_row["instances"]),
            f"{sent}/{len(outputs)}",
            study_row["reason"][:60],
        )
    Console().print(table)


# --- engine commands (enhance, train, evaluate) ---
# --- end engine commands ---
