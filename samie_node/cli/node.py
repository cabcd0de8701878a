"""The node's commands, for the PACS administrator and the operator: serve, echo, status, resend, reprocess,
process, retrieve, demo."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from samie_node.audit import AuditLog
from samie_node.cli.common import (
    ConfigOption,
    DataDirOption,
    EngineOption,
    RayAddressOption,
    app,
    configure_logging,
    counts_table,
    data_dir_override,
    engine_overrides,
    fail,
    open_spool,
    settings_from,
)
from samie_node.config import Peer, Settings, load_settings
from samie_node.errors import SamieNodeError
from samie_node.status import engine_line, read_engine_state, study_statuses

if TYPE_CHECKING:  # these import torch and highdicom: only the commands that need them load them
    from samie_node.batch import StudyOutcome
    from samie_node.encode.templates import Templates
    from samie_node.engine.backend import Engine


@app.command(rich_help_panel="The node: administrator and operator")
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="The node's AE title.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DICOM port to listen on.")] = None,
    data_dir: DataDirOption = None,
    destination: Annotated[
        list[str] | None,
        typer.Option("--destination", help="Where results go, AE@HOST:PORT (repeatable)."),
    ] = None,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every instance.")] = False,
) -> None:
    """Run the node: receive studies, process them, send SEG and SR back."""
    configure_logging(verbose)
    overrides: dict[str, Any] = {"node": {}, **engine_overrides(engine, ray_address)}
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
        raise fail(str(exc)) from exc

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("samie_node.cli").info("signal %d: stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.wait()


@app.command(rich_help_panel="The node: administrator and operator")
def echo(
    peer: Annotated[str, typer.Argument(help="The peer to C-ECHO, AE@HOST:PORT.")],
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
) -> None:
    """Check that a peer answers (C-ECHO)."""
    from samie_node.net.send import calling_ae_title
    from samie_node.net.send import echo as send_echo

    settings = settings_from(config)
    try:
        target = settings.send.peer(peer)
        elapsed = send_echo(target, calling_ae_title=calling_ae_title(settings), timeout_s=timeout)
    except SamieNodeError as exc:
        raise fail(str(exc), code=1) from exc
    Console().print(f"C-ECHO {target.label}: success in {elapsed:.0f} ms")


@app.command(rich_help_panel="The node: administrator and operator")
def status(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show studies, their states and their outputs."""
    settings = settings_from(config, data_dir_override(data_dir))
    spool = open_spool(settings, fsync=False)
    studies = study_statuses(spool)
    engine_state = read_engine_state(spool)
    spool.close()
    if as_json:
        typer.echo(json.dumps([study.to_dict() for study in studies], indent=2))
        return
    table = Table(title=f"samie-node studies ({settings.node.data_dir})")
    for column in ("Study Instance UID", "State", "Instances", "Outputs sent", "Note"):
        table.add_column(column)
    for study in studies:
        table.add_row(
            study.study_instance_uid,
            study.state,
            str(study.instances),
            f"{study.sent}/{len(study.outputs)}",
            study.reason[:60],
        )
    console = Console()
    console.print(table)
    console.print(engine_line(engine_state, sum(1 for study in studies if study.state == "ready")))


@app.command(rich_help_panel="The node: administrator and operator")
def resend(
    study: Annotated[list[str] | None, typer.Option("--study", help="Study Instance UID (repeatable).")] = None,
    accession: Annotated[list[str] | None, typer.Option("--accession", help="Accession number (repeatable).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Studies dated on or after YYYYMMDD.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only results waiting for a retry.")] = False,
    dead: Annotated[bool, typer.Option("--dead", help="Only results that gave up (dead letters).")] = False,
    to: Annotated[
        str | None, typer.Option("--to", help="Send to this AE@HOST:PORT (or dicomweb:NAME) instead.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be sent; send nothing.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-send results from the outbox; exits non-zero when anything was not delivered."""
    from rich.progress import Progress

    from samie_node.net.send import Sender
    from samie_node.resend import resend as run_resend

    configure_logging(False)
    settings = settings_from(config, data_dir_override(data_dir))
    if since is not None and not (len(since) == 8 and since.isdigit()):
        raise fail("--since takes a date as YYYYMMDD")
    try:
        target = settings.send.destination(to) if to else None
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    spool = open_spool(settings)
    states: list[Any] = (["retrying"] if failed else []) + (["dead"] if dead else [])
    outputs = spool.select_outputs(
        study_instance_uids=study or [], accession_numbers=accession or [], since=since, states=states
    )
    console = Console()
    if dry_run or not outputs:
        table = Table(title=f"{len(outputs)} result(s) would be re-sent" if dry_run else "nothing to re-send")
        for column in ("Study Instance UID", "SOP Instance UID", "to", "state"):
            table.add_column(column)
        for output in outputs:
            table.add_row(
                output.study_instance_uid,
                output.sop_instance_uid,
                target.label if target else output.destination,
                output.state,
            )
        console.print(table)
        return
    audit = AuditLog.for_settings(settings)
    with Progress(console=console) as progress:
        task = progress.add_task("re-sending", total=len(outputs))
        summary = run_resend(
            spool,
            Sender(settings, spool, audit),
            outputs,
            to=target,
            progress=lambda n: progress.advance(task, n),
        )
    console.print(counts_table("resend", [("sent", summary.sent), ("failed", summary.failed)]))
    for sop, destination, error in summary.failures[:20]:
        console.print(f"[red]not delivered[/red] {sop} to {destination}: {error}")
    spool.close()
    if summary.failed:
        raise typer.Exit(1)


@app.command(rich_help_panel="The node: administrator and operator")
def reprocess(
    study: Annotated[list[str] | None, typer.Option("--study", help="Study Instance UID (repeatable).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed study.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Queue done or failed studies for processing again by the running node (results are replaced)."""
    from samie_node.reprocess import reprocess as run_reprocess

    settings = settings_from(config, data_dir_override(data_dir))
    if not (study or failed):
        raise fail("give --study or --failed")
    spool = open_spool(settings)
    uids = list(study or []) + ([s.study_instance_uid for s in spool.studies("failed")] if failed else [])
    summary = run_reprocess(spool, uids)
    AuditLog.for_settings(settings).record("studies_requeued", studies=summary.queued, by="cli")
    spool.close()
    console = Console()
    console.print(counts_table("reprocess", [("queued", len(summary.queued)), ("left alone", len(summary.skipped))]))
    for uid, why in summary.skipped:
        console.print(f"left alone {uid}: {why}")


@app.command(rich_help_panel="The node: administrator and operator")
def process(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Folder for SEG, SR and PNG previews.")],
    destination: Annotated[
        str | None, typer.Option("--destination", help="Also send the results to AE@HOST:PORT.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Process studies already done for this model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    engine: EngineOption = None,
    ray_address: RayAddressOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the pipeline over files and folders offline (no PACS needed); resumable."""
    from samie_node.batch import group_by_study
    from samie_node.encode.templates import load_templates
    from samie_node.engine.backend import open_engine

    configure_logging(False)
    settings = settings_from(config, engine_overrides(engine, ray_address))
    try:
        peer = settings.send.peer(destination) if destination else None
        templates = load_templates()
        backend = open_engine(settings)
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    console = Console(stderr=as_json)
    studies, _ = group_by_study(paths)
    try:
        outcomes, unusable = _run_batch(
            paths, out, backend, templates, settings, peer, force, studies, console, as_json
        )
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    finally:
        backend.close()
    if as_json:
        typer.echo(
            json.dumps({"studies": [o.__dict__ for o in outcomes], "unusable_files": unusable}, indent=2, default=str)
        )
    else:
        _print_batch(console, out, outcomes, unusable)
    if any(o.state == "failed" or o.sent is False for o in outcomes):
        raise typer.Exit(1)


def _run_batch(
    paths: list[Path],
    out: Path,
    backend: Engine,
    templates: Templates,
    settings: Settings,
    peer: Peer | None,
    force: bool,
    studies: dict[str, list[Path]],
    console: Console,
    quiet: bool,
) -> tuple[list[StudyOutcome], int]:
    """``process_paths`` with two progress bars: studies, and images through the engine."""
    from rich.progress import Progress

    from samie_node.batch import process_paths

    with Progress(console=console, disable=quiet) as progress:
        study_task = progress.add_task("studies", total=len(studies))
        image_task = progress.add_task(f"images ({settings.engine.backend} engine)", total=None)

        def advance(outcome: StudyOutcome) -> None:
            progress.advance(study_task)

        return process_paths(
            paths,
            out,
            engine=backend,
            templates=templates,
            settings=settings,
            destination=peer,
            force=force,
            on_study=advance,
            on_images=lambda n: progress.advance(image_task, n),
        )


def _print_batch(console: Console, out: Path, outcomes: list[StudyOutcome], unusable: int) -> None:
    table = Table(title=f"processed into {out}")
    for column in ("Study Instance UID", "state", "files", "outputs", "note"):
        table.add_column(column)
    for o in outcomes:
        note = o.error or ("sent" if o.sent else "")
        table.add_row(o.study_instance_uid, o.state, str(o.files), str(len(o.outputs)), note[:60])
    console.print(table)
    console.print(
        counts_table(
            "summary",
            [
                ("done", sum(o.state == "done" for o in outcomes)),
                ("skipped (already done)", sum(o.state == "skipped" for o in outcomes)),
                ("failed", sum(o.state == "failed" or o.sent is False for o in outcomes)),
                ("files that are not usable DICOM", unusable),
            ],
        )
    )


@app.command(rich_help_panel="The node: administrator and operator")
def retrieve(
    pacs: Annotated[str, typer.Argument(help="The PACS to pull from, AE@HOST:PORT.")],
    study: Annotated[list[str] | None, typer.Option("--study", help="Study Instance UID (repeatable).")] = None,
    accessions: Annotated[
        Path | None, typer.Option("--accessions", help="File with one accession number per line.", exists=True)
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Studies dated on or after YYYYMMDD.")] = None,
    method: Annotated[str, typer.Option("--method", help="move (to the running node) or get.")] = "move",
    parallel: Annotated[int, typer.Option("--parallel", help="Studies retrieved at once.", min=1, max=8)] = 2,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Pull studies from a PACS (C-FIND, then C-MOVE or C-GET) into the node's spool for processing."""
    from rich.progress import Progress

    from samie_node.net.receive import Receiver, configure_pynetdicom
    from samie_node.net.retrieve import RetrieveOutcome, find_study_uids, get_study, move_study, retrieve_all
    from samie_node.net.send import calling_ae_title

    configure_logging(False)
    settings = settings_from(config, data_dir_override(data_dir))
    if method not in ("move", "get"):
        raise fail("--method is move or get")
    if not (study or accessions or since):
        raise fail("give --study, --accessions or --since")
    configure_pynetdicom()
    me = calling_ae_title(settings)
    try:
        peer = settings.send.peer(pacs)
        accession_numbers = [] if accessions is None else accessions.read_text(encoding="utf-8").split()
        uids = find_study_uids(
            peer, calling_ae_title=me, study_instance_uids=study or [], accession_numbers=accession_numbers, since=since
        )
    except SamieNodeError as exc:
        raise fail(str(exc), code=1) from exc
    console = Console()
    if not uids:
        console.print("no study matched")
        raise typer.Exit(1)
    receiver = None
    if method == "get":
        spool = open_spool(settings)
        receiver = Receiver(settings, spool, AuditLog.for_settings(settings))

    def one(uid: str) -> RetrieveOutcome:
        if receiver is not None:
            return get_study(peer, uid, store=receiver.handle_store, calling_ae_title=me)
        return move_study(peer, uid, move_destination=settings.node.ae_title, calling_ae_title=me)

    with Progress(console=console) as progress:
        task = progress.add_task(f"retrieving ({method})", total=len(uids))
        outcomes = retrieve_all(uids, one, max_parallel=parallel, on_done=lambda _o: progress.advance(task))
    table = Table(title=f"retrieved from {peer.label} by C-{method.upper()}")
    for column in ("Study Instance UID", "completed", "failed", "error"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.study_instance_uid, str(o.completed), str(o.failed), o.error[:60])
    console.print(table)
    console.print("the running node (samie-node serve) processes the studies once they are quiet")
    if any(o.error or o.failed for o in outcomes):
        raise typer.Exit(1)


@app.command(rich_help_panel="The node: administrator and operator")
def demo(
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Keep the demo's files here.")] = None,
) -> None:
    """Start a small PACS and the node on loopback, send CT, ultrasound and photo studies, show the results."""
    from samie_node.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run_demo(Console(), work_dir=work_dir)
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    raise typer.Exit(code)
