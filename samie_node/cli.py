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

from samie_node.audit import AuditLog
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
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding the spool, outbox and index.")]


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
    from samie_node.net.send import calling_ae_title
    from samie_node.net.send import echo as send_echo

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
    studies: list[dict[str, Any]] = []
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


def _spool(settings: Settings) -> Spool:
    try:
        return Spool(settings.node.data_dir, fsync=settings.node.fsync)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc


def _summary_table(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for label, count in rows:
        table.add_row(label, str(count))
    return table


@app.command()
def resend(
    study: Annotated[list[str] | None, typer.Option("--study", help="Study Instance UID (repeatable).")] = None,
    accession: Annotated[list[str] | None, typer.Option("--accession", help="Accession number (repeatable).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Studies dated on or after YYYYMMDD.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only results waiting for a retry.")] = False,
    dead: Annotated[bool, typer.Option("--dead", help="Only results that gave up (dead letters).")] = False,
    to: Annotated[str | None, typer.Option("--to", help="Send to this AE@HOST:PORT instead.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be sent; send nothing.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Re-send results from the outbox; exits non-zero when anything was not delivered."""
    from rich.progress import Progress

    from samie_node.net.send import Sender
    from samie_node.resend import resend as run_resend

    _configure_logging(False)
    settings = _settings(config, {"node": {"data_dir": data_dir}} if data_dir else None)
    if since is not None and not (len(since) == 8 and since.isdigit()):
        raise _fail("--since takes a date as YYYYMMDD")
    try:
        target = Peer.parse(to) if to else None
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    spool = _spool(settings)
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
    audit = AuditLog(settings.audit_path if settings.audit.enabled else None)
    with Progress(console=console) as progress:
        task = progress.add_task("re-sending", total=len(outputs))
        summary = run_resend(
            spool,
            Sender(settings, spool, audit),
            outputs,
            to=target,
            progress=lambda n: progress.advance(task, n),
        )
    console.print(
        _summary_table("resend", [("sent", summary.sent), ("failed", summary.failed), ("skipped", summary.skipped)])
    )
    for sop, destination, error in summary.failures[:20]:
        console.print(f"[red]not delivered[/red] {sop} to {destination}: {error}")
    spool.close()
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def process(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Folder for SEG, SR and PNG previews.")],
    destination: Annotated[
        str | None, typer.Option("--destination", help="Also send the results to AE@HOST:PORT.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Process studies already done for this model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the pipeline over files and folders offline (no PACS needed); resumable."""
    from rich.progress import Progress

    from samie_node.batch import StudyOutcome, group_by_study, process_paths
    from samie_node.encode.templates import load_templates
    from samie_node.engine.models import load_models

    _configure_logging(False)
    settings = _settings(config)
    try:
        peer = Peer.parse(destination) if destination else None
        if peer is not None:
            peer = {p.label: p for p in settings.send.destinations}.get(peer.label, peer)
        templates = load_templates()
        models = load_models(settings)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    console = Console(stderr=as_json)
    studies, _ = group_by_study(paths)
    with Progress(console=console, disable=as_json) as progress:
        task = progress.add_task("processing studies", total=len(studies))

        def advance(outcome: StudyOutcome) -> None:
            progress.advance(task)

        outcomes, unusable = process_paths(
            paths,
            out,
            models=models,
            templates=templates,
            settings=settings,
            destination=peer,
            force=force,
            on_study=advance,
        )
    if as_json:
        typer.echo(
            json.dumps({"studies": [o.__dict__ for o in outcomes], "unusable_files": unusable}, indent=2, default=str)
        )
    else:
        table = Table(title=f"processed into {out}")
        for column in ("Study Instance UID", "state", "files", "outputs", "note"):
            table.add_column(column)
        for o in outcomes:
            note = o.error or ("sent" if o.sent else "")
            table.add_row(o.study_instance_uid, o.state, str(o.files), str(len(o.outputs)), note[:60])
        console.print(table)
        console.print(
            _summary_table(
                "summary",
                [
                    ("done", sum(o.state == "done" for o in outcomes)),
                    ("skipped (already done)", sum(o.state == "skipped" for o in outcomes)),
                    ("failed", sum(o.state == "failed" or o.sent is False for o in outcomes)),
                    ("files that are not usable DICOM", unusable),
                ],
            )
        )
    if any(o.state == "failed" or o.sent is False for o in outcomes):
        raise typer.Exit(1)


@app.command()
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
    from samie_node.net.retrieve import RetrieveOutcome, find_studies, get_study, move_study, retrieve_all
    from samie_node.net.send import calling_ae_title

    _configure_logging(False)
    settings = _settings(config, {"node": {"data_dir": data_dir}} if data_dir else None)
    if method not in ("move", "get"):
        raise _fail("--method is move or get")
    if not (study or accessions or since):
        raise _fail("give --study, --accessions or --since")
    configure_pynetdicom()
    me = calling_ae_title(settings)
    try:
        peer = Peer.parse(pacs)
        peer = {p.label: p for p in settings.send.destinations}.get(peer.label, peer)
        uids: list[str] = []
        for uid in study or []:
            uids.extend(m.study_instance_uid for m in find_studies(peer, calling_ae_title=me, study_instance_uid=uid))
        if accessions is not None:
            for line in accessions.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    uids.extend(
                        m.study_instance_uid
                        for m in find_studies(peer, calling_ae_title=me, accession_number=line.strip())
                    )
        if since:
            uids.extend(m.study_instance_uid for m in find_studies(peer, calling_ae_title=me, since=since))
    except SamieNodeError as exc:
        raise _fail(str(exc), code=1) from exc
    uids = list(dict.fromkeys(uids))
    console = Console()
    if not uids:
        console.print("no study matched")
        raise typer.Exit(1)
    receiver = None
    if method == "get":
        spool = _spool(settings)
        receiver = Receiver(settings, spool, AuditLog(settings.audit_path if settings.audit.enabled else None))

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


@app.command()
def demo(
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Keep the demo's files here.")] = None,
) -> None:
    """Start a small PACS and the node on loopback, send CT, ultrasound and photo studies, show the results."""
    from samie_node.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run_demo(Console(), work_dir=work_dir)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    raise typer.Exit(code)


# --- engine commands (enhance, train, evaluate) ---
def _engine(settings: Settings) -> tuple[Any, Any]:
    """The device and autocast dtype the settings ask for."""
    from samie_node.engine.device import select_device, select_precision

    device = select_device(settings.engine)
    return device, select_precision(settings.engine, device)


def _segmenter_overrides(segmenter: str | None, sam_checkpoint: Path | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if segmenter is not None:
        overrides["kind"] = segmenter
    if sam_checkpoint is not None:
        overrides["sam_checkpoint"] = sam_checkpoint
    return {"segmenter": overrides} if overrides else {}


def _parse_box(text: str | None) -> Any:
    if text is None:
        return None
    import numpy as np

    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not (values[2] > values[0] and values[3] > values[1]):
        raise _fail(f"--box expects X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0, got {text!r}")
    return np.asarray(values, np.float32)


SegmenterOption = Annotated[
    str | None, typer.Option("--segmenter", help="litemedsam (embedded) or sam (needs --sam-checkpoint).")
]
SamCheckpointOption = Annotated[
    Path | None, typer.Option("--sam-checkpoint", help="SAM ViT checkpoint file (vit_b/l/h per config).")
]


@app.command()
def enhance(
    files: Annotated[list[Path], typer.Argument(help="DICOM, PNG or JPEG files.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")],
    config: ConfigOption = None,
    segmenter: SegmenterOption = None,
    sam_checkpoint: SamCheckpointOption = None,
    box: Annotated[str | None, typer.Option("--box", help="Box prompt X0,Y0,X1,Y1 in pixels.")] = None,
    method: Annotated[str, typer.Option("--method", help="sam_ie or samaug.")] = "sam_ie",
) -> None:
    """Segment images and write mask, contour, enhanced and overlay PNGs per image or frame."""
    from samie_node.engine.enhance import METHOD_NAMES, enhance_files
    from samie_node.engine.weights import load_segmenter

    if method not in METHOD_NAMES:
        raise _fail(f"--method must be one of {', '.join(METHOD_NAMES)}")
    prompt = _parse_box(box)
    settings = _settings(config, _segmenter_overrides(segmenter, sam_checkpoint))
    console = Console(stderr=True)
    failures: list[str] = []

    def report(path: Path, error: SamieNodeError) -> None:
        failures.append(path.name)
        console.print(f"[yellow]skipped[/yellow] {path.name}: {error}")

    try:
        device, precision = _engine(settings)
        model = load_segmenter(settings.segmenter, device, precision)
        written = enhance_files(
            files,
            out,
            segmenter=model,
            box=prompt,
            method=method,
            max_pixels=settings.limits.max_pixels,
            on_error=report,
        )
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"wrote {len(written)} PNG files to {out}")
    if failures:
        raise typer.Exit(1)


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per class.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    arch: Annotated[str, typer.Option("--arch", help="resnet50, swin_t or isa_densenet.")] = "isa_densenet",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Network input side.")] = 96,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per step.")] = 16,
    input_mode: Annotated[str, typer.Option("--input-mode", help="both, enhanced or original.")] = "both",
    method: Annotated[str, typer.Option("--method", help="Enhancement: sam_ie or samaug.")] = "sam_ie",
    validation_fraction: Annotated[float, typer.Option("--validation-fraction", min=0.0, max=0.9)] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the training.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Enhanced-image cache.")] = None,
    config: ConfigOption = None,
    segmenter: SegmenterOption = None,
    sam_checkpoint: SamCheckpointOption = None,
) -> None:
    """Train a classifier on original and SAM-IE enhanced images and write its checkpoint."""
    from samie_node.engine.classify import ARCHITECTURES, INPUT_MODES, save_checkpoint
    from samie_node.engine.enhance import METHOD_NAMES
    from samie_node.engine.train import RichProgress, TrainConfig, settings_digest, train_classifier
    from samie_node.engine.weights import load_segmenter

    if arch not in ARCHITECTURES or input_mode not in INPUT_MODES or method not in METHOD_NAMES:
        raise _fail(
            f"choose --arch from {ARCHITECTURES}, --input-mode from {INPUT_MODES}, --method from {METHOD_NAMES}"
        )
    settings = _settings(config, _segmenter_overrides(segmenter, sam_checkpoint))
    train_config = TrainConfig(
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        input_mode=input_mode,
        enhancement=method,
        validation_fraction=validation_fraction,
        seed=seed,
        max_pixels=settings.limits.max_pixels,
    )
    console = Console(stderr=True)
    try:
        device, precision = _engine(settings)
        model = load_segmenter(settings.segmenter, device, precision)
        with RichProgress(console) as progress:
            result = train_classifier(
                dataset,
                train_config,
                segmenter=model,
                device=device,
                cache_dir=cache_dir,
                settings_digest=settings_digest(settings.segmenter),
                progress=progress,
            )
        digest = save_checkpoint(out, result.model, result.content)
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    validation = result.evaluation
    summary = (
        f"validation accuracy {validation.accuracy:.3f}, AUC {validation.auc if validation.auc is not None else 'n/a'}"
        if validation
        else "no validation split (too few images)"
    )
    console.print(f"wrote {out} (sha256 {digest}); {summary}")


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per class.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Classifier checkpoint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also train an originals-only baseline on the same split.")
    ] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs of the baseline.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Enhanced-image cache.")] = None,
    config: ConfigOption = None,
    segmenter: SegmenterOption = None,
    sam_checkpoint: SamCheckpointOption = None,
) -> None:
    """Report accuracy, ROC AUC and the confusion matrix of a checkpoint on its validation split."""
    from samie_node.engine.train import RichProgress, evaluate_checkpoint, settings_digest
    from samie_node.engine.weights import load_segmenter

    settings = _settings(config, _segmenter_overrides(segmenter, sam_checkpoint))
    console = Console(stderr=True)
    try:
        device, precision = _engine(settings)
        model = load_segmenter(settings.segmenter, device, precision)
        with RichProgress(console) as progress:
            report = evaluate_checkpoint(
                checkpoint,
                dataset,
                segmenter=model,
                device=device,
                cache_dir=cache_dir,
                settings_digest=settings_digest(settings.segmenter),
                compare=compare,
                epochs=epochs,
                progress=progress,
            )
    except SamieNodeError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"{checkpoint.name} on the {report.split} split ({report.evaluation.count} images)")
    for column in ("model", "input", "accuracy", "ROC AUC", "confusion (rows: truth)"):
        table.add_column(column)
    rows = [("checkpoint", report.input_mode, report.evaluation)]
    if report.baseline is not None:
        rows.append(("baseline", report.baseline_input_mode or "original", report.baseline))
    for name, mode, result in rows:
        auc = f"{result.auc:.3f}" if result.auc is not None else "n/a"
        table.add_row(name, mode, f"{result.accuracy:.3f}", auc, str(result.confusion))
    Console().print(table)
    if not report.segmenter_matches:
        console.print("[yellow]note:[/yellow] the configured segmenter is not the one the checkpoint was trained with")


# --- end engine commands ---
