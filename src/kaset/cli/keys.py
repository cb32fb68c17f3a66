"""`kaset keys`: create, list and revoke API keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from kaset.auth.identity import Identity
from kaset.auth.keys import KeyInfo
from kaset.auth.principal import Actor
from kaset.cli.common import ConfigOption, cli_settings, console, err
from kaset.cli.identity import when, with_identity
from kaset.quotas.policy import Limits, LimitsModel

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'90' (seconds), '15m', '12h', '30d', '2w'."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 15m, 12h, 30d or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


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


@app.command("create")
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
    settings = cli_settings(config)
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
    key_limits = _parse_limits(limit or [])

    async def action(ident: Identity) -> tuple[str, KeyInfo]:
        owner = await ident.users.by_username(user)
        return await ident.keys.create(owner.id, label=label, allowed_models=allow_model or None,
                                       expires_at=expires_at, limits=key_limits, actor=Actor.cli())

    key, info = with_identity(settings, action)
    limits = f"; models: {', '.join(info.allowed_models)}" if info.allowed_models else ""
    until = f"; expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    if info.limits is not None:
        until += "; limits: " + ", ".join(f"{k}={v}" for k, v in info.limits.to_dict().items())
    err.print(f"created key {info.id} for {info.username} ({info.role}) {info.label!r}{limits}{until}; "
              "it is shown only now:")
    print(key)


@app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys (their prefixes only; keys are stored hashed)."""
    settings = cli_settings(config)

    async def action(ident: Identity) -> list[KeyInfo]:
        owner = (await ident.users.by_username(user)).id if user else None
        return await ident.keys.list(owner, include_revoked=all_keys)

    table = Table("id", "prefix", "user", "role", "label", "models", "expires", "created", "status")
    for info in with_identity(settings, action):
        table.add_row(str(info.id), info.prefix + "…", info.username, info.role, info.label,
                      ", ".join(info.allowed_models) if info.allowed_models is not None else "all",
                      when(info.expires_at), when(info.created_at), info.status)
    console.print(table)


@app.command("revoke")
def keys_revoke(key_id: int, config: ConfigOption = None) -> None:
    """Revoke a key by id. Running servers refuse it within a second (at once with Redis)."""
    settings = cli_settings(config)
    with_identity(settings, lambda ident: ident.keys.revoke(key_id, actor=Actor.cli()))
    console.print(f"revoked key {key_id}")
