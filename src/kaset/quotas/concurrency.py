"""Concurrent-request slots per key or user, in process or shared through Redis.

The `limits` library counts events in time windows; it has no notion of "requests in progress",
so slots are kept here. In Redis each scope is a sorted set of leases scored by their start
time: a lease is added only while the set holds fewer than the limit, atomically (one Lua
script), and removed when the request ends. A gateway that dies mid-request cannot remove its
leases; they are dropped once older than `lease_s`, so a crash costs the caller at most that
long with one slot fewer, never a slot forever.
"""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class ConcurrencySlots(Protocol):
    async def acquire(self, scope: str, limit: int, lease: str) -> bool: ...

    async def release(self, scope: str, lease: str) -> None: ...

    async def in_use(self, scope: str) -> int: ...


class MemorySlots:
    """One process's slots (the embedded mode, and the fallback while Redis is away)."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}

    async def acquire(self, scope: str, limit: int, lease: str) -> bool:
        held = self._held.setdefault(scope, set())
        if len(held) >= limit:
            return False
        held.add(lease)
        return True

    async def release(self, scope: str, lease: str) -> None:
        held = self._held.get(scope)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[scope]

    async def in_use(self, scope: str) -> int:
        return len(self._held.get(scope, ()))


class RedisSlots:
    """Slots shared by every gateway replica using the same Redis."""

    def __init__(self, redis: Redis, *, prefix: str = "kaset:conc:", lease_s: float = 600.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease_s = lease_s
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, scope: str, limit: int, lease: str) -> bool:
        now = time.time()
        acquired = await self._acquire(
            keys=[self._prefix + scope],
            args=[now, now - self._lease_s, limit, lease, int(self._lease_s * 1000)])
        return bool(acquired)

    async def release(self, scope: str, lease: str) -> None:
        await self._redis.zrem(self._prefix + scope, lease)

    async def in_use(self, scope: str) -> int:
        key = self._prefix + scope
        await self._redis.zremrangebyscore(key, "-inf", time.time() - self._lease_s)
        return int(await self._redis.zcard(key))
