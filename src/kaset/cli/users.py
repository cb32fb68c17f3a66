"""`kaset users`: create and list users, set their passwords."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kaset.auth.identity import Identity
from kaset.auth.principal import Actor
from kaset.cli.common import ConfigOption, cli_settings, console
from kaset.cli.identity import when, with_identity

app = typer.Typer(help="Create and list users (roles: admin, developer, consumer).", no_args_is_help=True)


@app.command("create")
def users_create(
    username: str,
    role: Annotated[str, typer.Option(help="admin, developer (may manage own keys) or consumer.")] = "consumer",
    password: Annotated[bool, typer.Option("--password", help="Prompt for a password (to sign in).")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a user."""
    settings = cli_settings(config)
    secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    user = with_identity(settings, lambda ident: ident.users.create(username, role, password=secret,
                                                                     actor=Actor.cli()))
    console.print(f"created user {user.id} {user.username!r} ({user.role})")


@app.command("list")
def users_list(
    all_users: Annotated[bool, typer.Option("--all", help="Include disabled users.")] = False,
    config: ConfigOption = None,
) -> None:
    """List users."""
    settings = cli_settings(config)
    users = with_identity(settings, lambda ident: ident.users.list(include_disabled=all_users))
    table = Table("id", "username", "role", "password", "created", "disabled")
    for user in users:
        table.add_row(str(user.id), user.username, user.role, "yes" if user.has_password else "",
                      when(user.created_at), when(user.disabled_at))
    console.print(table)


@app.command("set-password")
def users_set_password(username: str, config: ConfigOption = None) -> None:
    """Set (or replace) a user's password."""
    settings = cli_settings(config)
    secret = typer.prompt("New password", hide_input=True, confirmation_prompt=True)

    async def action(ident: Identity) -> None:
        user = await ident.users.by_username(username)
        await ident.users.update(user.id, password=secret, actor=Actor.cli())

    with_identity(settings, action)
    console.print(f"password set for {username!r}")
