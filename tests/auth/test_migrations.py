"""Migration 0002 on a database that has 0001's keys: on SQLite and on the real PostgreSQL.

Old keys must keep working after the upgrade, with their old role carried by a new owning user.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from kaset.auth.identity import Identity
from kaset.auth.keys import hash_key
from kaset.errors import AuthenticationFailed
from kaset.store.db import Database, alembic_config
from tests.auth.conftest import ACTOR

OLD_ADMIN, OLD_USER, OLD_REVOKED, OLD_ADMIN_2 = "ksk-old-admin-key", "ksk-old-user-key", "ksk-old-revoked", "ksk-adm2"


async def _legacy_database(url: str) -> Database:
    db = Database(url)
    await db.upgrade("0001")
    rows = [
        {"key_hash": hash_key(OLD_REVOKED), "prefix": OLD_REVOKED[:10], "name": "gone", "role": "admin",
         "revoked_at": datetime(2026, 1, 1, tzinfo=UTC)},
        {"key_hash": hash_key(OLD_ADMIN), "prefix": OLD_ADMIN[:10], "name": "admin (first start)", "role": "admin",
         "revoked_at": None},
        {"key_hash": hash_key(OLD_USER), "prefix": OLD_USER[:10], "name": "field app", "role": "user",
         "revoked_at": None},
        {"key_hash": hash_key(OLD_ADMIN_2), "prefix": OLD_ADMIN_2[:10], "name": "ops", "role": "admin",
         "revoked_at": None},
    ]
    table = sa.table("api_keys", sa.column("key_hash"), sa.column("prefix"), sa.column("name"), sa.column("role"),
                     sa.column("revoked_at", sa.DateTime(timezone=True)))
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(table), rows)
    return db


async def _check_upgraded(db: Database) -> None:
    identity = Identity(db, jwt_secret=None)
    admin = await identity.authenticate(OLD_ADMIN)
    assert (admin.username, admin.role, admin.label) == ("admin", "admin", "admin (first start)")
    user = await identity.authenticate(OLD_USER)
    assert (user.role, user.label, user.allowed_models, user.expires_at) == ("consumer", "field app", None, None)
    assert user.user_id != admin.user_id
    second = await identity.authenticate(OLD_ADMIN_2)
    assert second.role == "admin" and second.username.startswith("key-")
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await identity.authenticate(OLD_REVOKED)
    users = {u.username: u for u in await identity.users.list(include_disabled=True)}
    assert len(users) == 4 and sum(not u.active for u in users.values()) == 1
    # The new schema works for new rows too.
    created = await identity.users.create("newbie", "developer", actor=ACTOR)
    key, _ = await identity.keys.create(created.id, actor=ACTOR, allowed_models=["echo"])
    assert (await identity.authenticate(key)).allowed_models == frozenset({"echo"})
    # Not more than one bootstrap admin on an upgraded database.
    assert await identity.bootstrap_admin() is None


async def test_upgrade_0001_to_0002_on_sqlite(tmp_path: Path) -> None:
    db = await _legacy_database(f"sqlite+aiosqlite:///{tmp_path / 'legacy.db'}")
    await db.upgrade("0002")  # this step alone, then the later migrations on top of its data
    await db.upgrade()
    assert not await db.pending_migrations()
    await _check_upgraded(db)
    await db.close()


async def test_upgrade_0001_to_0002_on_postgresql(pg_url: str) -> None:
    db = await _legacy_database(pg_url)
    await db.upgrade("0002")
    await db.upgrade()
    assert not await db.pending_migrations()
    await _check_upgraded(db)
    async with db.engine.connect() as conn:
        columns = {c["name"] for c in await conn.run_sync(lambda sync: sa.inspect(sync).get_columns("api_keys"))}
        fks = await conn.run_sync(lambda sync: sa.inspect(sync).get_foreign_keys("api_keys"))
    assert {"user_id", "label", "allowed_models", "expires_at"} <= columns and not {"name", "role"} & columns
    assert fks and fks[0]["referred_table"] == "users"
    await db.close()


async def test_downgrade_to_0001_restores_the_old_schema(db_url: str) -> None:
    db = await _legacy_database(db_url)
    await db.upgrade("0002")

    def downgrade(sync: sa.Connection) -> None:
        command.downgrade(alembic_config(sync), "0001")

    async with db.engine.begin() as conn:
        await conn.run_sync(downgrade)
        rows = (await conn.execute(sa.text("SELECT name, role FROM api_keys ORDER BY id"))).all()
    assert [tuple(r) for r in rows] == [("gone", "admin"), ("admin (first start)", "admin"), ("field app", "user"),
                                        ("ops", "admin")]
    await db.close()
