"""Database engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# How long to wait for a PostgreSQL connection before calling the database unreachable
# (asyncpg's own default is 60 s, which would stall start-up and the request-log flusher).
CONNECT_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


class DatabaseNotMigrated(RuntimeError):
    """The database's schema is not the one this Kaset expects; `kaset db upgrade` fixes it."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            _ensure_sqlite_folder(url)
        connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_S} if "+asyncpg" in url else {}
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"),
                                                       connect_args=connect_args)
        if self.is_sqlite:
            # WAL: readers (key lookups) never wait for a writer (the request-log flusher), and a
            # commit writes each page once instead of twice through a rollback journal.
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas("journal_mode=WAL"))
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._log_engine: AsyncEngine | None = None

    @property
    def log_engine(self) -> AsyncEngine:
        """The engine the request log writes with. PostgreSQL: the main one. SQLite: its own
        connection with synchronous=NORMAL (per connection): a power cut may lose the last
        committed log batches, which the in-memory buffer would have lost anyway, while keys
        and users keep the default full durability."""
        if not self.is_sqlite:
            return self.engine
        if self._log_engine is None:
            self._log_engine = create_async_engine(self.url)
            event.listen(self._log_engine.sync_engine, "connect",
                         _sqlite_pragmas("journal_mode=WAL", "synchronous=NORMAL"))
        return self._log_engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    async def upgrade(self, revision: str = "head") -> None:
        """Apply every pending migration (or up to `revision`, for tests of a migration step)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade_sync, revision)

    async def pending_migrations(self) -> bool:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_is_behind)

    async def prepare_for_serving(self) -> bool:
        """Get the schema ready for the server, or refuse. Returns False if the database is unreachable.

        Embedded SQLite (the default, one process owns the file) is migrated at start: there is
        no operator step to forget. PostgreSQL is shared by gateway replicas and run by an
        operator, so the server never changes its schema on its own (replicas of two versions
        starting together would race): it refuses to start until `kaset db upgrade` has run.
        An unreachable PostgreSQL does not stop the start: requests are served and the request
        log buffers until the database comes back (see kaset.store.request_log).
        """
        if self.is_sqlite:
            await self.upgrade()
            return True
        try:
            async with self.engine.connect() as conn:
                current, head = await conn.run_sync(_revisions)
        except (OSError, TimeoutError) as exc:
            log.error("database %s is unreachable at start (%s); serving anyway, the request log buffers "
                      "until it returns", self.safe_url, exc)
            return False
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.error("database %s is unreachable at start (%s); serving anyway", self.safe_url, exc)
            return False
        if current != head:
            state = "has no Kaset tables yet" if current is None else f"is at schema revision {current}"
            message = (f"The database {self.safe_url} {state}; this version of Kaset needs revision {head}. "
                       "Run `kaset db upgrade` with the same KASET_DATABASE_URL, then start the server again.")
            log.error(message)
            raise DatabaseNotMigrated(message)
        return True

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        if self._log_engine is not None:
            await self._log_engine.dispose()
        await self.engine.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_sync(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _is_behind(connection: Connection) -> bool:
    current, head = _revisions(connection)
    return current != head


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    """(the database's revision, the newest revision this code knows)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return MigrationContext.configure(connection).get_current_revision(), head


def _sqlite_pragmas(*pragmas: str) -> Callable[[Any, Any], None]:
    def apply(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()

    return apply


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
