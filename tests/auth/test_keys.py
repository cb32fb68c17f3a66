"""API keys: owned by users, shown once, stored hashed, verified, expired, revoked (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from kaset.auth.allowlist import allows
from kaset.auth.identity import Identity
from kaset.auth.keys import KeyStore, hash_key
from kaset.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from kaset.registry.catalog import Catalog
from kaset.store.db import Database
from kaset.store.tables import ApiKey
from tests.auth.conftest import ACTOR


async def _user(identity: Identity, name: str = "alice", role: str = "developer") -> int:
    return (await identity.users.create(name, role, actor=ACTOR)).id


async def test_key_is_stored_only_as_hash(identity: Identity) -> None:
    key, info = await identity.keys.create(await _user(identity), label="field app", actor=ACTOR)
    assert key.startswith("ksk-") and len(key) > 40
    async with identity.db.sessions() as session:
        rows = list(await session.scalars(select(ApiKey)))
    assert [r.key_hash for r in rows] == [hash_key(key)]
    assert all(key not in (r.prefix + r.label + r.key_hash)[10:] for r in rows)
    principal = await identity.keys.verify(key)
    assert (principal.key_id, principal.username, principal.role, principal.label) == (
        info.id, "alice", "developer", "field app")
    assert principal.id == info.id  # what request.state.key.id meant before users existed


async def test_wrong_and_sql_ish_keys_are_refused(identity: Identity) -> None:
    await identity.keys.create(await _user(identity), actor=ACTOR)
    for bad in ("ksk-not-a-key", "' OR 1=1 --", "ksk-'; DROP TABLE api_keys; --", "\x00", "ไทย"):
        with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
            await identity.authenticate(bad)
    with pytest.raises(AuthenticationFailed, match="longer than any key"):
        await identity.authenticate("k" * 10_000)
    assert await identity.keys.count() == 1  # the table is still there


async def test_revoked_key_is_refused_at_once_in_this_process(identity: Identity) -> None:
    key, info = await identity.keys.create(await _user(identity), actor=ACTOR)
    await identity.keys.verify(key)  # now cached
    await identity.keys.revoke(info.id, actor=ACTOR)
    with pytest.raises(AuthenticationFailed, match="revoked") as caught:
        await identity.keys.verify(key)
    assert caught.value.code == "api_key_revoked"
    with pytest.raises(NotFound):
        await identity.keys.revoke(info.id, actor=ACTOR)
    assert await identity.keys.list() == []
    [revoked] = await identity.keys.list(include_revoked=True)
    assert revoked.status == "revoked"


async def test_expired_key_is_refused_even_when_cached(identity: Identity) -> None:
    user_id = await _user(identity)
    key, info = await identity.keys.create(user_id, actor=ACTOR, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    assert (await identity.keys.verify(key)).expires_at == info.expires_at
    await asyncio.sleep(1.1)
    with pytest.raises(AuthenticationFailed, match="expired") as caught:
        await identity.keys.verify(key)
    assert caught.value.code == "api_key_expired"
    assert (await identity.keys.get(info.id)).status == "expired"
    with pytest.raises(InvalidRequest, match="future"):
        await identity.keys.create(user_id, actor=ACTOR, expires_at=datetime.now(UTC) - timedelta(seconds=1))


async def test_owner_disabled_refuses_keys_and_last_admin_is_kept(identity: Identity) -> None:
    admin = await _user(identity, "root", "admin")
    dev = await _user(identity, "dev", "developer")
    key, _ = await identity.keys.create(dev, actor=ACTOR)
    await identity.keys.verify(key)
    await identity.users.delete(dev, actor=ACTOR)
    with pytest.raises(AuthenticationFailed):
        await identity.keys.verify(key)
    with pytest.raises(NotFound):
        await identity.keys.create(dev, actor=ACTOR)
    with pytest.raises(Conflict, match="last active admin"):
        await identity.users.update(admin, role="consumer", actor=ACTOR)
    with pytest.raises(Conflict, match="last active admin"):
        await identity.users.delete(admin, actor=ACTOR)
    with pytest.raises(Conflict, match="already exists"):
        await identity.users.create("ROOT", "consumer", actor=ACTOR)


async def test_role_change_reaches_cached_keys(identity: Identity) -> None:
    await _user(identity, "root", "admin")
    user_id = await _user(identity, "carol", "consumer")
    key, _ = await identity.keys.create(user_id, actor=ACTOR)
    assert (await identity.keys.verify(key)).role == "consumer"
    await identity.users.update(user_id, role="developer", actor=ACTOR)
    assert (await identity.keys.verify(key)).role == "developer"


async def test_allowlist_is_stored_and_validated(identity: Identity) -> None:
    user_id = await _user(identity)
    key, info = await identity.keys.create(user_id, actor=ACTOR, allowed_models=["echo", " echo", "whisper-1"])
    assert info.allowed_models == ["echo", "whisper-1"]
    assert (await identity.keys.verify(key)).allowed_models == frozenset({"echo", "whisper-1"})
    for bad in ([], [""], ["x" * 201], [f"m{i}" for i in range(101)]):
        with pytest.raises(InvalidRequest):
            await identity.keys.create(user_id, actor=ACTOR, allowed_models=bad)


def test_allowlist_matches_ids_aliases_and_versions(catalog: Catalog) -> None:
    whisper = catalog.resolve("whisper-tiny.en")
    alias = whisper.aliases[0]
    assert allows(frozenset({whisper.id}), alias, catalog)          # id covers its aliases
    assert allows(frozenset({alias}), whisper.id, catalog)          # and the other way round
    assert allows(frozenset({whisper.id}), whisper.key, catalog)    # id covers id@version
    assert not allows(frozenset({whisper.id}), "echo", catalog)
    assert not allows(frozenset({"echo"}), "no-such-model", catalog)


async def test_keystore_without_identity_still_works(tmp_path: Path) -> None:
    """The bare KeyStore (no Redis, no poll) used by scripts: create through Identity, verify alone."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    await db.upgrade()
    identity = Identity(db, jwt_secret=None)
    key, info = await identity.keys.create(await _user(identity), actor=ACTOR)
    assert (await KeyStore(db).verify(key)).key_id == info.id
    await db.close()


async def test_migrations_are_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    assert await db.pending_migrations()
    await db.upgrade()
    await db.upgrade()
    assert not await db.pending_migrations()
    await db.close()


async def test_bootstrap_creates_admin_user_once(identity: Identity) -> None:
    key = await identity.bootstrap_admin()
    assert key is not None
    principal = await identity.authenticate(key)
    assert (principal.username, principal.role) == ("admin", "admin")
    assert await identity.bootstrap_admin() is None
    preset = await Identity(identity.db, jwt_secret=None).bootstrap_admin("ksk-preset")
    assert preset is None  # the database already has users
