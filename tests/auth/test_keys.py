"""API keys: shown once, stored hashed, verified, revoked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from kaset.auth.keys import KeyStore, hash_key
from kaset.errors import AuthenticationFailed, NotFound
from kaset.store.db import Database
from kaset.store.tables import ApiKey


@pytest.fixture
async def keys(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    await db.upgrade()
    yield KeyStore(db)
    await db.close()


async def test_key_is_stored_only_as_hash(keys: KeyStore) -> None:
    key, info = await keys.create(name="field app")
    assert key.startswith("ksk-") and len(key) > 40
    async with keys.db.sessions() as session:
        rows = list(await session.scalars(select(ApiKey)))
    assert [r.key_hash for r in rows] == [hash_key(key)]
    assert all(key not in (r.prefix + r.name + r.key_hash)[10:] for r in rows)
    assert (await keys.verify(key)).id == info.id


async def test_wrong_key_is_refused(keys: KeyStore) -> None:
    await keys.create()
    with pytest.raises(AuthenticationFailed):
        await keys.verify("ksk-not-a-key")


async def test_revoked_key_is_refused_at_once_in_this_process(keys: KeyStore) -> None:
    key, info = await keys.create()
    await keys.verify(key)  # now cached
    await keys.revoke(info.id)
    with pytest.raises(AuthenticationFailed):
        await keys.verify(key)
    with pytest.raises(NotFound):
        await keys.revoke(info.id)
    assert await keys.list() == []
    assert len(await keys.list(include_revoked=True)) == 1


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    assert await db.pending_migrations()
    await db.upgrade()
    await db.upgrade()
    assert not await db.pending_migrations()
    await db.close()
