"""The database access the `kaset users` and `kaset keys` commands share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import typer

from kaset.auth.identity import Identity
from kaset.cli.common import err
from kaset.config import Settings
from kaset.errors import KasetError

T = TypeVar("T")


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else ""


def with_identity(settings: Settings, action: Callable[[Identity], Awaitable[T]]) -> T:
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
