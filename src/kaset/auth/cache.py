"""Verified-credential cache: in-process dicts, optionally backed by Redis, kept honest by invalidation.

The request path reads only `AuthCache.keys` (a dict keyed by the key's sha256): a hit costs a
hash, a dict lookup and a clock read. Everything else here exists so that a hit can be trusted:

* Redis (when `KASET_REDIS_URL` is set) is a second, shared level: a replica that has not seen a
  key yet finds it there instead of querying the database, and entries live `ttl_s` seconds.
* Revocation reaches every replica within 1 s by two independent paths:
  1. Redis pub/sub: whoever revokes (an API replica or the CLI) deletes the Redis entry and
     publishes; every replica's listener drops its in-process entry (milliseconds).
  2. A database poll every `poll_interval_s` (0.5 s): one indexed range query on
     `updated_at` in `api_keys` and `users`, whose cost does not grow with the number of cached
     keys. This is what makes `kaset keys revoke` from the CLI work on an embedded server with
     no Redis, and it backs up pub/sub when Redis is down or a message is lost. We chose it over
     re-validating every cached key each second (cost grows with the cache) and over a short TTL
     on positive entries (more database traffic on the hot path, and still not 1 s for free).
* Races closed on purpose: a replica that read a key from the database just before it was
  revoked must not put it back in a cache afterwards. In process, a generation counter bumped by
  every invalidation makes such a late write a no-op; in Redis, a short-lived tombstone makes the
  (atomic, Lua) cache write refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import DateTime, String, bindparam, cast, func, literal, select, union_all

from kaset.auth.principal import Principal
from kaset.store.db import Database
from kaset.store.tables import ApiKey, User

log = logging.getLogger(__name__)

# Rows changed this recently are re-read by every poll: it covers a PostgreSQL transaction that
# took its `now()` timestamp before the previous poll but committed after it, and SQLite's
# one-second CURRENT_TIMESTAMP resolution.
POLL_LOOKBACK = timedelta(seconds=5)
# A tombstone outlives any plausible gap between a database read and the Redis write after it.
TOMBSTONE_TTL_S = 30
# After a Redis error the request path skips Redis this long instead of waiting on timeouts.
REDIS_RETRY_S = 5.0

# SET the cache entry unless the key was invalidated in the last TOMBSTONE_TTL_S seconds.
_SET_UNLESS_TOMBSTONED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


_NOW = select(func.now())
# One round trip for both tables; both `updated_at` columns are indexed, so this stays a short
# range scan however many keys exist or are cached.
_since = bindparam("since", type_=DateTime(timezone=True))
_CHANGED = union_all(
    select(literal("k"), ApiKey.key_hash, ApiKey.updated_at).where(ApiKey.updated_at >= _since),
    select(literal("u"), cast(User.id, String), User.updated_at).where(User.updated_at >= _since),
)


class AuthCache:
    def __init__(self, ttl_s: float = 300.0, redis_url: str | None = None, prefix: str = "kaset:auth:") -> None:
        self.ttl_s = ttl_s
        # key sha256 -> (principal, monotonic deadline); user id -> same, for JWT callers.
        self.keys: dict[str, tuple[Principal, float]] = {}
        self.users: dict[int, tuple[Principal, float]] = {}
        # Bumped by every invalidation; a cache fill that started before a bump is dropped.
        self.generation = 0
        self.prefix = prefix
        self.channel = prefix + "invalidate"
        self.redis_url = redis_url
        self._redis: Redis | None = None
        self._set_script: Any = None
        if redis_url:
            # Short timeouts: Redis is an optimisation on the request path, the database is the truth.
            self._redis = Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
            self._set_script = self._redis.register_script(_SET_UNLESS_TOMBSTONED)
        self._redis_retry_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        # (kind, id, updated_at) seen by the poll within the lookback window -> monotonic expiry.
        self._seen: dict[tuple[str, object, object], float] = {}

    # --- in process ----------------------------------------------------------------------------

    def deadline(self, principal: Principal) -> float:
        """Monotonic time until which a cached principal may be used: the TTL, or the key's expiry."""
        ttl = self.ttl_s
        if principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at.timestamp() - time.time())
        return time.monotonic() + ttl

    def drop_local(self, key_hashes: Iterable[str] = (), user_ids: Iterable[int] = ()) -> None:
        self.generation += 1
        for key_hash in key_hashes:
            self.keys.pop(key_hash, None)
        users = set(user_ids)
        if users:
            for user_id in users:
                self.users.pop(user_id, None)
            # A user's role or state lives in each of their keys' principals too.
            for key_hash in [h for h, (p, _) in self.keys.items() if p.user_id in users]:
                self.keys.pop(key_hash, None)

    def clear_local(self) -> None:
        self.generation += 1
        self.keys.clear()
        self.users.clear()

    def sweep(self) -> None:
        """Forget expired entries (lookups ignore them anyway; this bounds memory)."""
        now = time.monotonic()
        for key_hash in [k for k, (_, deadline) in self.keys.items() if deadline <= now]:
            self.keys.pop(key_hash, None)
        for user_id in [u for u, (_, deadline) in self.users.items() if deadline <= now]:
            self.users.pop(user_id, None)

    # --- Redis ---------------------------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_retry_at

    def _redis_failed(self, what: str, exc: Exception) -> None:
        if time.monotonic() >= self._redis_retry_at:
            log.warning("Redis %s failed (%s); using the database for %.0f s", what, exc, REDIS_RETRY_S)
        self._redis_retry_at = time.monotonic() + REDIS_RETRY_S

    async def redis_get(self, key_hash: str) -> Principal | None:
        if not self._redis_usable():
            return None
        assert self._redis is not None
        try:
            raw = await self._redis.get(self.prefix + "key:" + key_hash)
        except (RedisError, OSError) as exc:
            self._redis_failed("read", exc)
            return None
        if raw is None:
            return None
        try:
            return Principal.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None

    async def redis_put(self, key_hash: str, principal: Principal) -> bool:
        """Share a principal read from the database; False if Redis refused it (recently invalidated)."""
        if not self._redis_usable():
            return True
        ttl = max(1, int(self.deadline(principal) - time.monotonic()))
        try:
            stored = await self._set_script(keys=[self.prefix + "key:" + key_hash, self.prefix + "tomb:" + key_hash],
                                            args=[principal.to_json(), ttl])
        except (RedisError, OSError) as exc:
            self._redis_failed("write", exc)
            return True
        return bool(stored)

    async def invalidate(self, key_hashes: Iterable[str] = (), user_ids: Iterable[int] = (),
                         publish: bool = True) -> None:
        """After a change has committed: drop it here, from Redis, and (publish) on every other replica.

        `key_hashes` must include the keys of every user in `user_ids`: their Redis entries carry
        the user's role too.
        """
        hashes, users = sorted(set(key_hashes)), sorted(set(user_ids))
        if not (hashes or users):
            return
        self.drop_local(hashes, users)
        if self._redis is None:
            return
        # Not gated by the retry window: a revocation is worth one more attempt.
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key_hash in hashes:
                    pipe.set(self.prefix + "tomb:" + key_hash, b"1", ex=TOMBSTONE_TTL_S)
                    pipe.delete(self.prefix + "key:" + key_hash)
                if publish:
                    pipe.publish(self.channel, json.dumps({"k": hashes, "u": users}))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The database poll on every replica still picks the change up within a second.
            self._redis_failed("invalidation", exc)
        # Again: a request may have copied the stale Redis entry in before the delete landed.
        self.drop_local(hashes, users)

    def _apply_message(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            hashes = [str(h) for h in message.get("k", [])]
            users = [int(u) for u in message.get("u", [])]
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring a malformed message on %s", self.channel)
            return
        self.drop_local(hashes, users)

    async def _listen(self) -> None:
        assert self.redis_url is not None
        # Its own connection with no read timeout: it waits on messages, and a health check
        # notices a dead server.
        client = Redis.from_url(self.redis_url, socket_connect_timeout=1.0, health_check_interval=5,
                                socket_keepalive=True)
        backoff = 0.2
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    # Messages sent while we were not listening are lost: start from an empty cache.
                    self.clear_local()
                    self.listening.set()
                    backoff = 0.2
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._apply_message(message["data"])
                except (RedisError, OSError) as exc:
                    if self.listening.is_set():
                        log.warning("lost the Redis invalidation channel (%s); reconnecting", exc)
                finally:
                    self.listening.clear()
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    # --- database poll -------------------------------------------------------------------------

    async def poll_once(self, db: Database, since: datetime | None) -> datetime:
        """Drop cached entries for rows changed since `since` (database time); returns the next `since`."""
        # Core on a bare connection, not an ORM session: this runs twice a second on the event loop.
        async with db.engine.connect() as conn:
            # The database's clock, not ours: writers stamp `updated_at` with it too.
            now = (await conn.execute(_NOW)).scalar_one()
            if since is None:
                since = now - POLL_LOOKBACK
            changed = (await conn.execute(_CHANGED, {"since": since})).all()
            expiry = time.monotonic() + 2 * POLL_LOOKBACK.total_seconds()
            new_hashes = [str(ident) for kind, ident, stamp in changed
                          if kind == "k" and self._first_sight(kind, ident, stamp, expiry)]
            new_users = [int(ident) for kind, ident, stamp in changed
                         if kind == "u" and self._first_sight(kind, ident, stamp, expiry)]
            if new_users and self._redis is not None:
                # Their keys' shared Redis entries carry the old role: those go too.
                new_hashes += (await conn.scalars(select(ApiKey.key_hash)
                                                  .where(ApiKey.user_id.in_(new_users)))).all()
        # No publish: every replica runs this poll itself.
        await self.invalidate(new_hashes, new_users, publish=False)
        return now - POLL_LOOKBACK

    def _first_sight(self, kind: str, ident: object, stamp: object, expiry: float) -> bool:
        """Each change is applied once, though every poll re-reads the lookback window."""
        seen = (kind, ident, stamp)
        if seen in self._seen:
            return False
        self._seen[seen] = expiry
        return True

    async def _poll(self, db: Database, interval_s: float) -> None:
        since: datetime | None = None
        last_sweep = time.monotonic()
        failing = False
        while True:
            try:
                since = await self.poll_once(db, since)
                if failing:
                    log.warning("credential revocation poll works again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be briefly away: keep polling, log once
                if not failing:
                    log.warning("credential revocation poll failed (%s); retrying every %.1f s", exc, interval_s)
                failing = True
            now = time.monotonic()
            if now - last_sweep > 60:
                last_sweep = now
                self.sweep()
                for seen in [s for s, until in self._seen.items() if until <= now]:
                    del self._seen[seen]
            await asyncio.sleep(interval_s)

    # --- life cycle ----------------------------------------------------------------------------

    def start(self, db: Database, poll_interval_s: float = 0.5) -> None:
        """Start the background invalidation (a running server; the CLI only publishes)."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._poll(db, poll_interval_s), name="kaset-auth-poll"))
        if self.redis_url:
            self._tasks.append(asyncio.create_task(self._listen(), name="kaset-auth-listen"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
