"""`kaset crop`: calibrate Crop Guardian's thresholds on your labelled photos."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kaset.cli.common import ConfigOption, cli_catalog, cli_settings, console, err
from kaset.errors import KasetError
from kaset.registry.repository import ModelRepository

app = typer.Typer(help="Crop Guardian: calibrate its thresholds on your labelled photos.", no_args_is_help=True)


@app.command("calibrate")
def crop_calibrate(
    photos: Annotated[Path, typer.Argument(help="A folder per label of the crop model, plus other/.",
                                           exists=True, file_okay=False)],
    crop: Annotated[str, typer.Option(help="The crop the photos are of.")] = "mango",
    false_accept: Annotated[float, typer.Option(help="Highest share of other/ photos that may be diagnosed.")] = 0.01,
    confident_error: Annotated[float, typer.Option(
        help="Highest share of wrong labels among diagnoses shown as confident (green).")] = 0.05,
    floor: Annotated[float, typer.Option(help="Never diagnose below this confidence, whatever the photos say.")] = 0.5,
    fit_leaf: Annotated[bool, typer.Option(help="Fit the leaf outline to the labelled photos' leaves.")] = False,
    output: Annotated[Path | None, typer.Option(
        help="Where to write the calibrated Crop Guardian config (default: DATA_DIR/crop_guardian.yaml).")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the gate and crop models over labelled photos; print the confusion table and the false-accept and
    false-reject rates per threshold; write the thresholds that meet --false-accept."""
    from kaset.knowledge.schema import load_entries
    from kaset.pipelines import calibrate as calibration
    from kaset.pipelines.diagnose import DEFAULT_CONFIG, CropGuardianConfig, DiagnosisService
    from kaset.registry.manager import ModelManager

    settings = cli_settings(config)
    source = Path(os.environ.get("KASET_CROP_GUARDIAN_CONFIG", DEFAULT_CONFIG))
    target = output or settings.data_dir / "crop_guardian.yaml"

    async def run(progress: Progress, task: TaskID) -> calibration.Calibration:
        manager = ModelManager(cli_catalog(settings), ModelRepository(settings.resolved_models_dir))
        try:
            service = DiagnosisService(manager, load_entries(), CropGuardianConfig.load(source))
            return await calibration.calibrate(
                service, photos, crop, false_accept=false_accept, confident_error=confident_error,
                floor=floor, fit_leaf=fit_leaf, max_pixels=settings.max_image_pixels,
                progress=lambda done, total: progress.update(task, completed=done, total=total))
        finally:
            await manager.close()

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("photos", total=None)
        try:
            result = asyncio.run(run(progress, task))
        except (calibration.CalibrationError, KasetError) as exc:
            err.print(f"[red]{getattr(exc, 'message', exc)}[/]")
            raise typer.Exit(2) from exc
    for path, reason in result.skipped:
        err.print(f"[yellow]skipped[/] {path}: {reason}")
    _print_calibration(result)
    for warning in result.warnings:
        err.print(f"[yellow]note[/]: {warning}")
    if result.unsure_below is None or result.unsure_below >= 1.0:
        err.print(f"[red]No threshold keeps the false-accept rate at {false_accept:.1%}[/]: the gate lets "
                  "some other/ photos through at full confidence. Nothing written.")
        raise typer.Exit(1)
    calibration.write_config(source, target, result, false_accept)
    console.print(f"unsure_below {result.unsure_below:.3f}, confident_above {result.confident_above:.3f} "
                  f"written to {target}\nServe with it: KASET_CROP_GUARDIAN_CONFIG={target} kaset serve")


def _nearest(rows: list[Any], threshold: float) -> Any:
    return min(rows, key=lambda row: abs(row.threshold - threshold))


def _print_calibration(result: Any) -> None:
    threshold = result.unsure_below if result.unsure_below is not None else 1.0
    confusion = result.confusion(threshold)
    outcomes = sorted({o for row in confusion.values() for o in row})
    table = Table("photos of \\ answered", *outcomes, title=f"Outcomes at unsure_below {threshold:.3f}")
    for truth, counts in sorted(confusion.items()):
        table.add_row(truth, *(str(counts.get(o, 0)) for o in outcomes))
    console.print(table)
    rates = Table("threshold", "false accept", "false reject", "wrong among diagnosed", "diagnosed",
                  title="Per confidence threshold")
    marks = {round(result.unsure_below or -1, 4): " unsure_below", round(result.confident_above or -1, 4):
             " confident_above"}
    shown = [r for r in result.rows if r.threshold in (0.0,) or round(r.threshold, 4) in marks] + \
        [_nearest(result.rows, t) for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
    for row in sorted({id(r): r for r in shown}.values(), key=lambda r: r.threshold):
        rates.add_row(f"{min(row.threshold, 1.0):.3f}{marks.get(round(row.threshold, 4), '')}",
                      f"{row.false_accept:.1%}", f"{row.false_reject:.1%}", f"{row.error:.1%}", str(row.diagnosed))
    console.print(rates)
    signals = Table("signal", "refused or doubted: crop photos", "other photos", title="Which gate signal decided")
    refusals = result.signal_refusals()
    for name in sorted(set(refusals["crop"]) | set(refusals["other"])):
        signals.add_row(name, str(refusals["crop"].get(name, 0)), str(refusals["other"].get(name, 0)))
    console.print(signals)
