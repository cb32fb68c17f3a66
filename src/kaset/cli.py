"""The `kaset` command line: serve, models, users, keys, db."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kaset.auth.identity import Identity
from kaset.auth.keys import KeyInfo
from kaset.auth.principal import Actor
from kaset.config import Settings, load_settings
from kaset.errors import KasetError
from kaset.quotas.policy import Limits, LimitsModel
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import ModelRepository, apt_get_line, missing_commands

app = typer.Typer(help="Kaset: self-hosted AI services behind one OpenAI-compatible gateway.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
models_app = typer.Typer(help="Install, list and remove models.", no_args_is_help=True)
users_app = typer.Typer(help="Create and list users (roles: admin, developer, consumer).", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
crop_app = typer.Typer(help="Crop Guardian: calibrate its thresholds on your labelled photos.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(crop_app, name="crop")

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.", exists=True)]


def _settings(config: Path | None = None, **overrides: object) -> Settings:
    return load_settings(config, **overrides)


def _catalog(settings: Settings) -> Catalog:
    return Catalog.load(settings.catalog_dirs)


# --- serve ------------------------------------------------------------------------------------


@app.command()
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

    settings = _settings(config, host=host, port=port, models=models, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    catalog = _catalog(settings)
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


@app.command("jobs-worker")
def jobs_worker(
    config: ConfigOption = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated model ids to load before taking jobs (others load on first use).")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue to consume (default: KASET_JOBS_QUEUE).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run async jobs from the queue (Celery; needs KASET_JOBS_BROKER_URL), one at a time."""
    settings = _settings(config, models=models, jobs_queue=queue, log_level=log_level)
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


@app.command("worker")
def worker(
    models: Annotated[str, typer.Option("--models", help="Comma-separated model ids this worker serves.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run a model worker: the model routes for these models only, behind a gateway (docs/workers.md)."""
    from kaset.workers.app import max_concurrent_override, run_worker

    settings = _settings(config, host=host, port=port, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [m.strip() for m in models.split(",") if m.strip()]
    catalog = _catalog(settings)
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


@app.command("up")
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


# --- models -----------------------------------------------------------------------------------


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Every model in the catalog and whether it is installed."""
    settings = _settings(config)
    repo = ModelRepository(settings.resolved_models_dir)
    table = Table("id", "version", "tasks", "runtime", "languages", "licence", "default", "installed", "aliases")
    for spec in _catalog(settings):
        table.add_row(spec.id, spec.version, ",".join(spec.tasks), spec.runtime, ",".join(spec.languages), spec.license,
                      "yes" if spec.default else "", _installed_mark(repo, spec), ", ".join(spec.aliases))
    console.print(table)


def _installed_mark(repo: ModelRepository, spec: ModelSpec) -> str:
    if repo.is_installed(spec):
        return "[green]yes[/]"
    if spec.source.kind == "system":
        return f"[yellow]no[/] ({apt_get_line(spec.source)})"
    return "[red]no[/]"


@models_app.command("install")
def models_install(
    model_ids: Annotated[list[str] | None, typer.Argument(help="Model ids or aliases.")] = None,
    default: Annotated[bool, typer.Option("--default", help="Install the whole default pack.")] = False,
    force: Annotated[bool, typer.Option(help="Reinstall even if present.")] = False,
    config: ConfigOption = None,
) -> None:
    """Copy models into the model repository and verify every file's sha256."""
    settings = _settings(config)
    catalog = _catalog(settings)
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


@models_app.command("remove")
def models_remove(model_id: str, config: ConfigOption = None) -> None:
    """Delete an installed model's files."""
    settings = _settings(config)
    spec = _resolve_or_exit(_catalog(settings), model_id)
    if ModelRepository(settings.resolved_models_dir).remove(spec):
        console.print(f"removed {spec.key}")
    else:
        console.print(f"{spec.key} was not installed")


@models_app.command("info")
def models_info(
    model_id: str,
    verify: Annotated[bool, typer.Option(help="Re-hash the installed files.")] = False,
    config: ConfigOption = None,
) -> None:
    """A model's catalog entry and model card."""
    settings = _settings(config)
    spec = _resolve_or_exit(_catalog(settings), model_id)
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


# --- users and keys -----------------------------------------------------------------------------

T = TypeVar("T")
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'90' (seconds), '15m', '12h', '30d', '2w'."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 15m, 12h, 30d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else ""


def _with_identity(settings: Settings, action: Callable[[Identity], Awaitable[T]]) -> T:
    """Run one identity action on the configured database. With KASET_REDIS_URL set, revocations
    are also published to running servers (they see them at once; otherwise within their
    database poll, half a second by default)."""
    from kaset.store.db import Database

    async def run() -> T:
        db = Database(settings.resolved_database_url)
        try:
            await db.upgrade()
            identity = Identity.from_settings(settings, db, sign_in=False)
            try:
                return await action(identity)
            finally:
                await identity.close()
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except KasetError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc


@users_app.command("create")
def users_create(
    username: str,
    role: Annotated[str, typer.Option(help="admin, developer (may manage own keys) or consumer.")] = "consumer",
    password: Annotated[bool, typer.Option("--password", help="Prompt for a password (to sign in).")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a user."""
    settings = _settings(config)
    secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    user = _with_identity(settings, lambda ident: ident.users.create(username, role, password=secret,
                                                                      actor=Actor.cli()))
    console.print(f"created user {user.id} {user.username!r} ({user.role})")


@users_app.command("list")
def users_list(
    all_users: Annotated[bool, typer.Option("--all", help="Include disabled users.")] = False,
    config: ConfigOption = None,
) -> None:
    """List users."""
    settings = _settings(config)
    users = _with_identity(settings, lambda ident: ident.users.list(include_disabled=all_users))
    table = Table("id", "username", "role", "password", "created", "disabled")
    for user in users:
        table.add_row(str(user.id), user.username, user.role, "yes" if user.has_password else "",
                      _when(user.created_at), _when(user.disabled_at))
    console.print(table)


@users_app.command("set-password")
def users_set_password(username: str, config: ConfigOption = None) -> None:
    """Set (or replace) a user's password."""
    settings = _settings(config)
    secret = typer.prompt("New password", hide_input=True, confirmation_prompt=True)

    async def action(ident: Identity) -> None:
        user = await ident.users.by_username(username)
        await ident.users.update(user.id, password=secret, actor=Actor.cli())

    _with_identity(settings, action)
    console.print(f"password set for {username!r}")


def _parse_limits(items: list[str]) -> Limits | None:
    values: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise typer.BadParameter(f"{item!r}: expected NAME=N, e.g. requests_per_minute=100", param_hint="--limit")
        values[name.strip()] = int(value)
    if not values:
        return None
    try:
        return LimitsModel(**values).to_limits()
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--limit") from None


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", "-u", help="The owner's username.")],
    label: Annotated[str, typer.Option("--label", "--name", help="A label to tell keys apart.")] = "",
    allow_model: Annotated[list[str] | None, typer.Option(
        "--allow-model", help="A model id or alias the key may call; repeat for more (default: every model).")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime: 3600, 15m, 12h, 30d, 2w (default: none).")] = None,
    limit: Annotated[list[str] | None, typer.Option(
        "--limit", help="NAME=N, repeatable: requests_per_minute, concurrent_requests, tokens_per_day, "
                        "audio_seconds_per_day, images_per_day (default: the server's defaults).")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an API key for a user and print it (the only time it is shown)."""
    settings = _settings(config)
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
    key_limits = _parse_limits(limit or [])

    async def action(ident: Identity) -> tuple[str, KeyInfo]:
        owner = await ident.users.by_username(user)
        return await ident.keys.create(owner.id, label=label, allowed_models=allow_model or None,
                                       expires_at=expires_at, limits=key_limits, actor=Actor.cli())

    key, info = _with_identity(settings, action)
    limits = f"; models: {', '.join(info.allowed_models)}" if info.allowed_models else ""
    until = f"; expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    if info.limits is not None:
        until += "; limits: " + ", ".join(f"{k}={v}" for k, v in info.limits.to_dict().items())
    err.print(f"created key {info.id} for {info.username} ({info.role}) {info.label!r}{limits}{until}; "
              "it is shown only now:")
    print(key)


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys (their prefixes only; keys are stored hashed)."""
    settings = _settings(config)

    async def action(ident: Identity) -> list[KeyInfo]:
        owner = (await ident.users.by_username(user)).id if user else None
        return await ident.keys.list(owner, include_revoked=all_keys)

    table = Table("id", "prefix", "user", "role", "label", "models", "expires", "created", "status")
    for info in _with_identity(settings, action):
        table.add_row(str(info.id), info.prefix + "…", info.username, info.role, info.label,
                      ", ".join(info.allowed_models) if info.allowed_models is not None else "all",
                      _when(info.expires_at), _when(info.created_at), info.status)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int, config: ConfigOption = None) -> None:
    """Revoke a key by id. Running servers refuse it within a second (at once with Redis)."""
    settings = _settings(config)
    _with_identity(settings, lambda ident: ident.keys.revoke(key_id, actor=Actor.cli()))
    console.print(f"revoked key {key_id}")


# --- db ---------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending database migrations."""
    from kaset.store.db import Database

    settings = _settings(config)

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await db.upgrade()
        finally:
            await db.close()

    asyncio.run(run())
    console.print("database is up to date")


@crop_app.command("calibrate")
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

    settings = _settings(config)
    source = Path(os.environ.get("KASET_CROP_GUARDIAN_CONFIG", DEFAULT_CONFIG))
    target = output or settings.data_dir / "crop_guardian.yaml"

    async def run(progress: Progress, task: TaskID) -> calibration.Calibration:
        manager = ModelManager(_catalog(settings), ModelRepository(settings.resolved_models_dir))
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
