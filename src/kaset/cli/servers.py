"""The commands that run Kaset's processes: serve (the gateway with its models), worker (a model
worker), jobs-worker (the Celery jobs worker) and up (a local topology of them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn

from kaset.cli.common import ConfigOption, cli_catalog, cli_settings, console, err
from kaset.errors import KasetError
from kaset.registry.repository import ModelRepository


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    config: ConfigOption = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated model ids to load at start (default: the installed default pack).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the gateway with its models in this process (the embedded mode)."""
    import uvicorn

    from kaset.app import create_app, startup_models

    settings = cli_settings(config, host=host, port=port, models=models, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    catalog = cli_catalog(settings)
    repository = ModelRepository(settings.resolved_models_dir)
    try:
        to_load = startup_models(settings, catalog, repository)
    except KasetError as exc:
        err.print(f"[red]{exc.message}[/] Installed models: kaset models list")
        raise typer.Exit(2) from exc
    console.print(f"[bold green]Kaset[/] on http://{settings.host}:{settings.port}  "
                  f"(models in {settings.resolved_models_dir}; API docs at /docs)")
    progress = Progress(TextColumn("[bold]loading models"), BarColumn(), TextColumn("{task.description}"),
                        console=console)
    bar = progress.add_task("", total=len(to_load) or 1)
    if to_load:
        progress.start()

    def loaded(model_id: str, done: int, total: int, seconds: float) -> None:
        progress.update(bar, completed=done, description=f"{model_id} ({seconds:.1f}s)")
        if done == total:
            progress.stop()

    uvicorn.run(create_app(settings, on_load=loaded), host=settings.host, port=settings.port,
                log_level=settings.log_level, loop="uvloop", http="httptools", access_log=False)


def jobs_worker(
    config: ConfigOption = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated model ids to load before taking jobs (others load on first use).")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue to consume (default: KASET_JOBS_QUEUE).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run async jobs from the queue (Celery; needs KASET_JOBS_BROKER_URL), one at a time."""
    settings = cli_settings(config, models=models, jobs_queue=queue, log_level=log_level)
    if models is None:
        settings = settings.model_copy(update={"models": []})  # models load on a job's first use
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.jobs_broker_url:
        err.print("[red]No broker: set KASET_JOBS_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672// or "
                  "redis://127.0.0.1:6379/0).[/] Without one the server runs jobs itself (the embedded mode).")
        raise typer.Exit(2)
    from kaset.jobs.celery_app import RemoteOpener, run_worker

    open_remote: RemoteOpener | None = None
    if settings.worker_urls or settings.worker_registry == "redis":
        from kaset.workers.remote import open_worker_models  # jobs run on the model workers' models too

        open_remote = open_worker_models
    run_worker(settings, loglevel=settings.log_level.upper(), open_remote=open_remote)


def worker(
    models: Annotated[str, typer.Option("--models", help="Comma-separated model ids this worker serves.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run a model worker: the model routes for these models only, behind a gateway (docs/workers.md)."""
    from kaset.workers.app import max_concurrent_override, run_worker

    settings = cli_settings(config, host=host, port=port, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [m.strip() for m in models.split(",") if m.strip()]
    catalog = cli_catalog(settings)
    try:
        for name in names:
            catalog.resolve(name)
        max_concurrent_override()
    except (KasetError, ValueError) as exc:
        err.print(f"[red]{getattr(exc, 'message', exc)}[/]")
        raise typer.Exit(2) from exc
    if not names:
        err.print("[red]--models names no model[/]")
        raise typer.Exit(2)
    console.print(f"[bold green]Kaset worker[/] on http://{settings.host}:{settings.port} serving {', '.join(names)}")
    run_worker(settings, names)


def up(
    file: Annotated[Path, typer.Argument(help="Topology YAML (see deploy/topology.example.yaml).", exists=True)],
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for every process to be ready.")] = 300,
) -> None:
    """Start a local topology (a gateway and its workers) as child processes; Ctrl-C stops them all."""
    from kaset.workers.topology import Topology, run_topology

    try:
        topology = Topology.load(file)
    except (ValueError, OSError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    raise typer.Exit(run_topology(topology, console, ready_timeout_s=ready_timeout))
