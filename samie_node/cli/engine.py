"""The engine's commands, for whoever looks after the models: enhance, train, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from samie_node.cli.common import ConfigOption, app, fail, settings_from
from samie_node.config import Settings
from samie_node.errors import SamieNodeError


def _segmenter(settings: Settings) -> tuple[Any, Any]:
    """The configured segmenter, loaded on the device the settings ask for, and that device."""
    from samie_node.engine.device import select_device, select_precision
    from samie_node.engine.models import engine_cache
    from samie_node.engine.weights import load_segmenter

    device = select_device(settings.engine)
    precision = select_precision(settings.engine, device)
    segmenter = load_segmenter(
        settings.segmenter, device, precision, runtime=settings.engine.runtime, cache_dir=engine_cache(settings)
    )
    return segmenter, device


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
        raise fail(f"--box expects X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0, got {text!r}")
    return np.asarray(values, np.float32)


SegmenterOption = Annotated[
    str | None, typer.Option("--segmenter", help="litemedsam (embedded) or sam (needs --sam-checkpoint).")
]
SamCheckpointOption = Annotated[
    Path | None, typer.Option("--sam-checkpoint", help="SAM ViT checkpoint file (vit_b/l/h per config).")
]


@app.command(rich_help_panel="The models")
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

    if method not in METHOD_NAMES:
        raise fail(f"--method must be one of {', '.join(METHOD_NAMES)}")
    prompt = _parse_box(box)
    settings = settings_from(config, _segmenter_overrides(segmenter, sam_checkpoint))
    console = Console(stderr=True)
    failures: list[str] = []

    def report(path: Path, error: SamieNodeError) -> None:
        failures.append(path.name)
        console.print(f"[yellow]skipped[/yellow] {path.name}: {error}")

    try:
        model, _ = _segmenter(settings)
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
        raise fail(str(exc)) from exc
    console.print(f"wrote {len(written)} PNG files to {out}")
    if failures:
        raise typer.Exit(1)


@app.command(rich_help_panel="The models")
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
    from samie_node.engine.dataset import settings_digest
    from samie_node.engine.enhance import METHOD_NAMES
    from samie_node.engine.progress import RichProgress
    from samie_node.engine.train import TrainConfig, train_classifier

    if arch not in ARCHITECTURES or input_mode not in INPUT_MODES or method not in METHOD_NAMES:
        raise fail(f"choose --arch from {ARCHITECTURES}, --input-mode from {INPUT_MODES}, --method from {METHOD_NAMES}")
    settings = settings_from(config, _segmenter_overrides(segmenter, sam_checkpoint))
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
        model, device = _segmenter(settings)
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
        raise fail(str(exc)) from exc
    validation = result.evaluation
    summary = (
        f"validation accuracy {validation.accuracy:.3f}, AUC {validation.auc if validation.auc is not None else 'n/a'}"
        if validation
        else "no validation split (too few images)"
    )
    console.print(f"wrote {out} (sha256 {digest}); {summary}")


def _metric(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _evaluation_row(name: str, mode: str, result: Any) -> list[str]:
    return [
        name,
        mode,
        _metric(result.accuracy, result.accuracy_ci),
        _metric(result.auc, result.auc_ci),
        str(result.confusion),
    ]


_EVALUATION_COLUMNS = ("model", "input", "accuracy [95% CI]", "ROC AUC [95% CI]", "confusion (rows: truth)")


@app.command(rich_help_panel="The models")
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per class.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Classifier checkpoint.")],
    input_mode: Annotated[
        str | None, typer.Option("--input-mode", help="original, enhanced or both: refuse a checkpoint of another.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Enhanced-image cache.")] = None,
    config: ConfigOption = None,
    segmenter: SegmenterOption = None,
    sam_checkpoint: SamCheckpointOption = None,
) -> None:
    """Report accuracy and ROC AUC (95% bootstrap intervals) and the confusion matrix of a checkpoint on its
    validation split."""
    from samie_node.engine.dataset import settings_digest
    from samie_node.engine.evaluate import evaluate_checkpoint
    from samie_node.engine.progress import RichProgress

    settings = settings_from(config, _segmenter_overrides(segmenter, sam_checkpoint))
    console = Console(stderr=True)
    try:
        model, device = _segmenter(settings)
        with RichProgress(console) as progress:
            report = evaluate_checkpoint(
                checkpoint,
                dataset,
                segmenter=model,
                device=device,
                cache_dir=cache_dir,
                settings_digest=settings_digest(settings.segmenter),
                input_mode=input_mode,
                progress=progress,
            )
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"{checkpoint.name} on the {report.split} split ({report.evaluation.count} images)")
    for column in _EVALUATION_COLUMNS:
        table.add_column(column)
    table.add_row(*_evaluation_row("checkpoint", report.input_mode, report.evaluation))
    Console().print(table)
    if not report.segmenter_matches:
        console.print("[yellow]note:[/yellow] the configured segmenter is not the one the checkpoint was trained with")


@app.command(rich_help_panel="The models")
def compare(
    dataset: Annotated[Path, typer.Argument(help="Folder with one sub-folder of images per class.")],
    arch: Annotated[
        list[str] | None, typer.Option("--arch", help="resnet50, swin_t or isa_densenet (repeatable).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs of every arm.")] = 10,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Network input side.")] = 96,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per step.")] = 16,
    validation_fraction: Annotated[float, typer.Option("--validation-fraction", min=0.05, max=0.9)] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the training.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Enhanced-image cache.")] = None,
    config: ConfigOption = None,
    segmenter: SegmenterOption = None,
    sam_checkpoint: SamCheckpointOption = None,
) -> None:
    """Train each architecture on original and on SAM-IE enhanced images (same split and seed) and report
    both arms side by side: the SAM-IE comparison on your own labelled data."""
    from samie_node.engine.classify import ARCHITECTURES
    from samie_node.engine.compare import compare as run_compare
    from samie_node.engine.dataset import settings_digest
    from samie_node.engine.progress import RichProgress
    from samie_node.engine.train import TrainConfig

    archs = arch or ["isa_densenet"]
    if any(a not in ARCHITECTURES for a in archs):
        raise fail(f"choose --arch from {ARCHITECTURES}")
    settings = settings_from(config, _segmenter_overrides(segmenter, sam_checkpoint))
    configs = [
        TrainConfig(
            arch=a,
            epochs=epochs,
            batch_size=batch_size,
            image_size=image_size,
            validation_fraction=validation_fraction,
            seed=seed,
            max_pixels=settings.limits.max_pixels,
        )
        for a in archs
    ]
    console = Console(stderr=True)
    try:
        model, device = _segmenter(settings)
        with RichProgress(console) as progress:
            result = run_compare(
                dataset,
                configs,
                segmenter=model,
                device=device,
                cache_dir=cache_dir,
                settings_digest=settings_digest(settings.segmenter),
                progress=progress,
            )
    except SamieNodeError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    title = (
        f"SAM-IE comparison on {dataset} ({result.train_count} training, {len(result.validation_files)} validation"
        f" files, seed {result.seed})"
    )
    table = Table(title=title)
    for column in _EVALUATION_COLUMNS:
        table.add_column(column)
    for arm in result.arms:
        table.add_row(*_evaluation_row(arm.arch, arm.input_mode, arm.evaluation))
    Console().print(table)
