"""Worker discovery through Redis (`KASET_WORKER_REGISTRY=redis`).

A worker writes `<KASET_REDIS_PREFIX>workers:<url>` = {"url", "models", "ready"} every
`KASET_WORKER_HEARTBEAT_S` with a time-to-live of `KASET_WORKER_TTL_S`, and deletes it when it
stops; a worker that dies simply expires. The gateway reads the keys every second: a new key is
a worker appearing, `ready: false` one going unready (no traffic), a missing key one gone. While
Redis cannot be read the gateway keeps the workers it last saw for
`KASET_WORKER_REGISTRY_GRACE_S` (logged), then drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kaset.config import Settings

log = logging.getLogger("kaset.workers")


class Membership(Protocol):
    """What discovery changes in the gateway's pool (kaset.workers.pool.WorkerPool)."""

    def add(self, url: str) -> Any: ...

    def update(self, replica: Any, *, up: bool, ready: bool, models: Iterable[str] | None = None) -> None: ...

    def remove(self, url: str) -> None: ...


def _client(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise ValueError("KASET_WORKER_REGISTRY=redis needs KASET_REDIS_URL")
    return Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)


def advertise_url(settings: Settings) -> str:
    if settings.worker_advertise_url:
        return settings.worker_advertise_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{settings.port}"


class RedisAnnouncer:
    """Worker side: the heartbeat."""

    def __init__(self, settings: Settings, models: list[str], is_ready: Callable[[], bool]) -> None:
        self.redis = _client(settings)
        self.url = advertise_url(settings)
        self.key = f"{settings.redis_prefix}workers:{self.url}"
        self.models = models
        self.is_ready = is_ready
        self.every_s = settings.worker_heartbeat_s
        self.ttl_ms = int(settings.worker_ttl_s * 1000)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def announce_soon(self) -> None:
        """Announce now rather than at the next heartbeat (the worker started draining). Safe
        from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def announce(self) -> None:
        value = json.dumps({"url": self.url, "models": self.models, "ready": bool(self.is_ready())})
        await self.redis.set(self.key, value, px=self.ttl_ms)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.announce()
                if failing:
                    log.info("worker registry: Redis is back; announcing %s again", self.url)
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("worker registry: cannot announce %s in Redis (%s)", self.url, exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            self._wake.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.key)
        await self.redis.aclose()


class RedisDiscovery:
    """Gateway side: the workers announced in Redis, kept in the pool."""

    def __init__(self, settings: Settings, pool: Membership) -> None:
        self.redis = _client(settings)
        self.pattern = f"{settings.redis_prefix}workers:*"
        self.pool = pool
        self.grace_s = settings.worker_registry_grace_s
        self.every_s = min(1.0, settings.worker_heartbeat_s)
        self.static = {u.rstrip("/") for u in settings.worker_urls}
        self.known: set[str] = set()

    async def read(self) -> dict[str, dict[str, object]]:
        keys = [key async for key in self.redis.scan_iter(match=self.pattern, count=500)]
        values = await self.redis.mget(keys) if keys else []
        entries: dict[str, dict[str, object]] = {}
        for value in values:
            if value is None:
                continue
            try:
                entry = json.loads(value)
                entries[str(entry["url"]).rstrip("/")] = entry
            except (ValueError, KeyError, TypeError):
                continue
        return entries

    def apply(self, entries: dict[str, dict[str, object]]) -> None:
        for url, entry in entries.items():
            replica = self.pool.add(url)
            models = entry.get("models")
            self.pool.update(replica, up=True, ready=bool(entry.get("ready")),
                             models=[str(m) for m in models] if isinstance(models, list) else None)
        for url in self.known - set(entries) - self.static:
            self.pool.remove(url)
        self.known = set(entries)

    async def run(self) -> None:
        last_ok = time.monotonic()
        failing = False
        try:
            while True:
                try:
                    entries = await self.read()
                except (RedisError, OSError) as exc:
                    now = time.monotonic()
                    if not failing:
                        log.warning("worker registry: Redis unreachable (%s); keeping the %d last known worker(s) "
                                    "for %g s", exc, len(self.known), self.grace_s)
                        failing = True
                    if self.known and now - last_ok > self.grace_s:
                        log.error("worker registry: Redis unreachable for %g s; dropping %d worker(s)",
                                  self.grace_s, len(self.known))
                        self.apply({})
                else:
                    if failing:
                        log.info("worker registry: Redis is back (%d worker(s))", len(entries))
                    failing = False
                    last_ok = time.monotonic()
                    self.apply(entries)
                await asyncio.sleep(self.every_s)
        finally:
            await self.redis.aclose()
