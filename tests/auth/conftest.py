"""Real backends for the identity tests: SQLite files, throwaway PostgreSQL databases, Redis.

PostgreSQL and Redis are the real services on this machine (127.0.0.1:5432 and :6379; override
with KASET_TEST_PG_DSN / KASET_TEST_REDIS_URL). A test that needs one is skipped, with the
reason, only when the service is unreachable.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from kaset.auth.identity import Identity
from kaset.auth.principal import Actor
from kaset.store.db import Database
from tests.fixtures.redis import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]

PG_DSN = os.environ.get("KASET_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "test-secret-" + "0123456789abcdef" * 3
ACTOR = Actor.system("test")


async def _pg_execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_unreachable() -> str | None:
    try:
        asyncio.run(_pg_execute("SELECT 1"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_DSN} is unreachable ({exc}); start it (.ci/run) to run this test"
    return None


@contextmanager
def throwaway_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards (even on failure)."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)
    name = f"kaset_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    try:
        base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using it runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'kaset.db'}"
    else:
        with throwaway_pg_database() as url:
            yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.upgrade()
    yield database
    await database.close()


@pytest.fixture
async def identity(db: Database) -> AsyncIterator[Identity]:
    ident = Identity(db, jwt_secret=SECRET)
    yield ident
    await ident.close()
