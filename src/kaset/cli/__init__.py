"""The `kaset` command line (the `kaset` script runs `app`): the process commands at the top
level, and a command group per module.

    kaset serve | worker | jobs-worker | up    kaset.cli.servers
    kaset models ...                           kaset.cli.models
    kaset users ...                            kaset.cli.users
    kaset keys ...                             kaset.cli.keys
    kaset db ...                               kaset.cli.db
    kaset crop ...                             kaset.cli.crop

`kaset.cli.common` holds what they share (consoles, --config, settings), `kaset.cli.identity`
the database access of users and keys.
"""

from __future__ import annotations

import typer

from kaset.cli import crop, db, keys, models, servers, users

app = typer.Typer(help="Kaset: self-hosted AI services behind one OpenAI-compatible gateway.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.command()(servers.serve)
app.command("jobs-worker")(servers.jobs_worker)
app.command("worker")(servers.worker)
app.command("up")(servers.up)
app.add_typer(models.app, name="models")
app.add_typer(users.app, name="users")
app.add_typer(keys.app, name="keys")
app.add_typer(db.app, name="db")
app.add_typer(crop.app, name="crop")
