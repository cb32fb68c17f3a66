"""Alembic environment: runs on the connection Kaset hands it (see kaset.store.db)."""

from alembic import context

import kaset.store.log_tables  # noqa: F401  (registers the request-log tables on Base.metadata)
from kaset.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `kaset db upgrade`, which provides the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
