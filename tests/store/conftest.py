"""Databases for the store tests: SQLite files and a throwaway PostgreSQL database per run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from kaset.store.db import Database
from tests.fixtures import postgres
from tests.fixtures.tcp_proxy import TcpProxy


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database for this test run (its name); dropped at the end."""
    with postgres.throwaway_database() as name:
        yield name


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'kaset.db'}"
    return postgres.url(request.getfixturevalue("pg_database"))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated, empty-logged database of each kind."""
    database = Database(db_url)
    await database.upgrade()
    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM request_log"))
        await conn.execute(text("DELETE FROM usage_daily"))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of the real PostgreSQL, to make it go away and come back."""
    tcp = TcpProxy(postgres.PORT, postgres.HOST)
    try:
        yield tcp
    finally:
        tcp.close()
