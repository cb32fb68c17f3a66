"""`kaset models`: install, list, inspect and remove the catalog's models."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kaset.cli.common import ConfigOption, cli_catalog, cli_settings, console, err
from kaset.errors import KasetError
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import ModelRepository, apt_get_line, missing_commands

app = typer.Typer(help="Install, list and remove models.", no_args_is_help=True)


@app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model in the catalog and whether it is installed."""
    settings = cli_settings(config)
    repo = ModelRepository(settings.resolved_models_dir)
    table = Table("id", "version", "tasks", "runtime", "languages", "licence", "default", "installed", "aliases")
    for spec in cli_catalog(settings):
        table.add_row(spec.id, spec.version, ",".join(spec.tasks), spec.runtime, ",".join(spec.languages), spec.license,
                      "yes" if spec.default else "", _installed_mark(repo, spec), ", ".join(spec.aliases))
    console.print(table)


def _installed_mark(repo: ModelRepository, spec: ModelSpec) -> str:
    if repo.is_installed(spec):
        return "[green]yes[/]"
    if spec.source.kind == "system":
        return f"[yellow]no[/] ({apt_get_line(spec.source)})"
    return "[red]no[/]"


@app.command("install")
def models_install(
    model_ids: Annotated[list[str] | None, typer.Argument(help="Model ids or aliases.")] = None,
    default: Annotated[bool, typer.Option("--default", help="Install the whole default pack.")] = False,
    force: Annotated[bool, typer.Option(help="Reinstall even if present.")] = False,
    config: ConfigOption = None,
) -> None:
    """Copy models into the model repository and verify every file's sha256."""
    settings = cli_settings(config)
    catalog = cli_catalog(settings)
    repo = ModelRepository(settings.resolved_models_dir)
    try:
        specs = [s for s in catalog if s.default] if default else [catalog.resolve(m) for m in model_ids or []]
    except KasetError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    if not specs:
        err.print("Name the models to install, or pass --default.")
        raise typer.Exit(2)
    failures = 0
    for spec in specs:
        failures += not _install_one(repo, spec, force)
    # With --default, a model missing its system packages is skipped, not fatal: the rest of
    # the pack still serves (make run as a non-root user).
    if failures and not default:
        raise typer.Exit(1)


def _install_one(repo: ModelRepository, spec: ModelSpec, force: bool) -> bool:
    if spec.source.kind == "system":
        missing = missing_commands(spec.source)
        if missing:
            err.print(f"[yellow]skip {spec.key}[/]: needs {', '.join(missing)}. "
                      f"Install with: sudo {apt_get_line(spec.source)}")
            return False
        console.print(f"[green]ok[/] {spec.key} (system engine)")
        return True
    if repo.is_installed(spec) and not force:
        console.print(f"[green]ok[/] {spec.key} already installed at {repo.path_for(spec)}")
        return True
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(spec.key, total=None)

        def report(name: str, done: int, total: int) -> None:
            progress.update(task, description=f"{spec.key}: {name}", completed=done, total=total)

        try:
            path = repo.install(spec, progress=report, force=force)
        except KasetError as exc:
            err.print(f"[red]failed {spec.key}[/]: {exc.message}")
            return False
    console.print(f"[green]installed[/] {spec.key} -> {path}")
    return True


@app.command("remove")
def models_remove(model_id: str, config: ConfigOption = None) -> None:
    """Delete an installed model's files."""
    settings = cli_settings(config)
    spec = _resolve_or_exit(cli_catalog(settings), model_id)
    if ModelRepository(settings.resolved_models_dir).remove(spec):
        console.print(f"removed {spec.key}")
    else:
        console.print(f"{spec.key} was not installed")


@app.command("info")
def models_info(
    model_id: str,
    verify: Annotated[bool, typer.Option(help="Re-hash the installed files.")] = False,
    config: ConfigOption = None,
) -> None:
    """A model's catalog entry and model card."""
    settings = cli_settings(config)
    spec = _resolve_or_exit(cli_catalog(settings), model_id)
    repo = ModelRepository(settings.resolved_models_dir)
    console.print_json(data={"catalog": spec.model_dump(by_alias=True, exclude_none=True),
                             "installed": repo.is_installed(spec), "path": str(repo.path_for(spec)),
                             "card": repo.card(spec)})
    if verify and spec.needs_install:
        bad = repo.verify(spec)
        if bad:
            err.print(f"[red]checksum mismatch[/]: {', '.join(bad)}")
            raise typer.Exit(1)
        console.print("[green]all files match their sha256[/]")


def _resolve_or_exit(catalog: Catalog, name: str) -> ModelSpec:
    try:
        return catalog.resolve(name)
    except KasetError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
