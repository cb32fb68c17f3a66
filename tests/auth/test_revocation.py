"""Revocation across replicas: Redis pub/sub, the database poll, and the shared Redis cache.

Each "replica" is a separate Identity (own in-process cache, own Redis connections, own
database engine) on the same database, as two gateway processes would be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kaset.auth.cache import AuthCache
from kaset.auth.identity import Identity
from kaset.auth.keys import hash_key
from kaset.errors import AuthenticationFailed
from kaset.store.db import Database
from tests.auth.conftest import ACTOR, SECRET

Replica = Callable[..., Awaitable[Identity]]


@pytest.fixture
async def replica(db_url: str) -> AsyncIterator[Replica]:
    made: list[tuple[Identity, Database]] = []

    async def make(redis_url: str | None = None, prefix: str = "kaset:auth:", poll_s: float = 0.5,
                   start: bool = True) -> Identity:
        db = Database(db_url)
        await db.upgrade()
        ident = Identity(db, jwt_secret=SECRET, redis_url=redis_url, redis_prefix=prefix, poll_interval_s=poll_s)
        if start:
            ident.start()
            if redis_url:
                await asyncio.wait_for(ident.cache.listening.wait(), 5)
        made.append((ident, db))
        return ident

    yield make
    for ident, db in made:
        await ident.close()
        await db.close()


async def _refused_within(ident: Identity, key: str, seconds: float) -> float:
    """Seconds until `key` is refused by this replica (fails the test after `seconds`)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            await ident.authenticate(key)
        except AuthenticationFailed:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    pytest.fail(f"the revoked key was still accepted after {seconds} s")


async def test_revocation_reaches_another_replica_through_redis(replica: Replica, redis_url: str,
                                                                redis_prefix: str) -> None:
    # A long poll interval: only pub/sub can make this test pass.
    a = await replica(redis_url, redis_prefix, poll_s=60)
    b = await replica(redis_url, redis_prefix, poll_s=60)
    user = await a.users.create("alice", "developer", actor=ACTOR)
    key, info = await a.keys.create(user.id, actor=ACTOR)
    await b.authenticate(key)
    assert b.cache.keys, "replica B caches the verified key in process"
    await a.keys.revoke(info.id, actor=ACTOR)
    took = await _refused_within(b, key, 1.0)
    assert took < 1.0


async def test_user_change_reaches_another_replica_through_redis(replica: Replica, redis_url: str,
                                                                 redis_prefix: str) -> None:
    a = await replica(redis_url, redis_prefix, poll_s=60)
    b = await replica(redis_url, redis_prefix, poll_s=60)
    await a.users.create("root", "admin", actor=ACTOR)
    user = await a.users.create("dave", "developer", actor=ACTOR, password="correct horse")
    key, _ = await a.keys.create(user.id, actor=ACTOR)
    token = (await a.tokens.login("dave", "correct horse")).access_token
    assert (await b.authenticate(key)).role == "developer"
    assert (await b.authenticate(token)).role == "developer"
    await a.users.update(user.id, role="consumer", actor=ACTOR)
    deadline = time.monotonic() + 1.0
    while (await b.authenticate(key)).role != "consumer" or (await b.authenticate(token)).role != "consumer":
        assert time.monotonic() < deadline, "the role change did not reach replica B within 1 s"
        await asyncio.sleep(0.01)
    await a.users.delete(user.id, actor=ACTOR)
    await _refused_within(b, key, 1.0)
    await _refused_within(b, token, 1.0)


async def test_revocation_without_redis_through_the_database_poll(replica: Replica) -> None:
    """What `kaset keys revoke` does to an embedded server with no Redis: the server's poll sees it."""
    server = await replica(None)
    cli = await replica(None, start=False)
    user = await cli.users.create("erin", "consumer", actor=ACTOR)
    key, info = await cli.keys.create(user.id, actor=ACTOR)
    await server.authenticate(key)
    await asyncio.sleep(0.6)  # a poll or two with nothing to do
    await cli.keys.revoke(info.id, actor=ACTOR)
    took = await _refused_within(server, key, 1.0)
    assert took < 1.0


async def test_shared_redis_cache_serves_a_replica_that_never_saw_the_key(replica: Replica, redis_url: str,
                                                                          redis_prefix: str) -> None:
    a = await replica(redis_url, redis_prefix, poll_s=60)
    b = await replica(redis_url, redis_prefix, poll_s=60)
    user = await a.users.create("frank", "consumer", actor=ACTOR)
    key, _ = await a.keys.create(user.id, actor=ACTOR, allowed_models=["echo"])
    principal = await a.authenticate(key)

    async def no_database(key_hash: str) -> None:
        raise AssertionError("replica B should have found the key in Redis")

    b.keys._load = no_database  # type: ignore[method-assign,assignment]
    assert await b.authenticate(key) == principal


async def test_tombstone_stops_a_late_cache_write(redis_url: str, redis_prefix: str, db: Database) -> None:
    """A replica that read a key just before its revocation must not put it back into Redis."""
    writer = AuthCache(redis_url=redis_url, prefix=redis_prefix)
    revoker = AuthCache(redis_url=redis_url, prefix=redis_prefix)
    ident = Identity(db, jwt_secret=None)
    user = await ident.users.create("gina", "consumer", actor=ACTOR)
    key, _ = await ident.keys.create(user.id, actor=ACTOR)
    stale = await ident.keys.verify(key)
    await revoker.invalidate(key_hashes=[hash_key(key)])
    assert not await writer.redis_put(hash_key(key), stale)
    assert await writer.redis_get(hash_key(key)) is None
    await writer.close()
    await revoker.close()


async def test_redis_down_falls_back_to_the_database(replica: Replica) -> None:
    """Redis configured but unreachable: keys still verify (from the database), quickly, and revocation
    still works through the poll. Never an open door, never a hang."""
    ident = await replica("redis://127.0.0.1:1/0", start=False)
    ident.start()
    user = await ident.users.create("hank", "consumer", actor=ACTOR)
    key, info = await ident.keys.create(user.id, actor=ACTOR)
    started = time.monotonic()
    assert (await ident.authenticate(key)).key_id == info.id
    assert time.monotonic() - started < 2.0
    other = await replica(None, start=False)
    await other.keys.revoke(info.id, actor=ACTOR)
    await _refused_within(ident, key, 1.0)
