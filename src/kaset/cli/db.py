"""`kaset db`: database migrations."""

from __future__ import annotations

import asyncio

import typer

from kaset.cli.common import ConfigOption, cli_settings, console

app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending database migrations."""
    from kaset.store.db import Database

    settings = cli_settings(config)

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await db.upgrade()
        finally:
            await db.close()

    asyncio.run(run())
    console.print("database is up to date")
