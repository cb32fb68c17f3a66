"""Schema at start: embedded SQLite migrates itself; PostgreSQL must be migrated by `kaset db upgrade`
and the server refuses to start on an unmigrated one, with a message saying what to run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from kaset.app import create_app
from kaset.config import Settings
from kaset.store.db import Database, DatabaseNotMigrated
from tests.fixtures import postgres
from tests.fixtures.tcp_proxy import free_port


async def _state(url: str) -> tuple[bool, set[str]]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        return await db.pending_migrations(), tables
    finally:
        await db.close()


def test_sqlite_is_migrated_at_start(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=models_dir, models=[])
    with TestClient(create_app(settings, announce_key=lambda key: None)) as client:
        assert client.get("/health/live").status_code == 200
    pending, tables = asyncio.run(_state(settings.resolved_database_url))
    assert not pending
    assert {"request_log", "usage_daily", "api_keys"} <= tables


def test_unmigrated_postgres_refuses_to_start(tmp_path: Path, models_dir: Path) -> None:
    with postgres.throwaway_database(migrated=False) as name:
        settings = Settings(data_dir=tmp_path, models_dir=models_dir, models=[], database_url=postgres.url(name))
        with pytest.raises(DatabaseNotMigrated, match="kaset db upgrade"), \
                TestClient(create_app(settings, announce_key=lambda key: None)):
            pass
        # It refused without touching the schema.
        pending, tables = asyncio.run(_state(postgres.url(name)))
        assert pending and "request_log" not in tables


def test_kaset_serve_refuses_then_db_upgrade_fixes_it(tmp_path: Path, models_dir: Path) -> None:
    with postgres.throwaway_database(migrated=False) as name:
        env = {**os.environ, "KASET_DATA_DIR": str(tmp_path), "KASET_MODELS_DIR": str(models_dir),
               "KASET_DATABASE_URL": postgres.url(name)}
        serve = subprocess.run([sys.executable, "-m", "kaset", "serve", "--port", str(free_port()), "--models", ""],
                               env=env, capture_output=True, text=True, timeout=120)
        output = serve.stdout + serve.stderr
        assert serve.returncode != 0, output
        assert "has no Kaset tables yet" in output and "Run `kaset db upgrade`" in output, output
        upgrade = subprocess.run([sys.executable, "-m", "kaset", "db", "upgrade"], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        pending, tables = asyncio.run(_state(postgres.url(name)))
        assert not pending and {"request_log", "usage_daily"} <= tables
        settings = Settings(data_dir=tmp_path, models_dir=models_dir, models=[], database_url=postgres.url(name))
        with TestClient(create_app(settings, announce_key=lambda key: None)) as client:
            assert client.get("/health/live").status_code == 200
