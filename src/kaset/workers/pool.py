"""The gateway's view of its workers: replicas, the models each serves, readiness, load.

One shared aiohttp session (a keep-alive pool) carries every call to every worker. Replicas come
from `KASET_WORKER_URLS` (each polled at /health/ready every `KASET_WORKER_POLL_INTERVAL_S`) or
from the Redis registry (kaset.workers.registry). A request for a model some replica serves goes
to the ready replica with the fewest calls outstanding whose breaker admits it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from kaset.config import Settings
from kaset.registry.breakers import Breaker
from kaset.registry.catalog import Catalog

log = logging.getLogger("kaset.workers")


@dataclass(eq=False)
class Replica:
    url: str
    breaker: Breaker
    models: tuple[str, ...] = ()
    ready: bool = False
    # Answered its last readiness poll (or is announced in the registry).
    up: bool = False
    outstanding: int = 0
    names: frozenset[str] = field(default_factory=frozenset)


class WorkerPool:
    def __init__(self, settings: Settings, catalog: Catalog, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.token = settings.worker_token.get_secret_value() if settings.worker_token else None
        self.timeout_s = settings.worker_timeout_s
        # Every name a client may use (ids, aliases, id@version) -> the replicas serving it.
        self.models: dict[str, list[Replica]] = {}
        self.replicas: dict[str, Replica] = {}
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rotate = 0
        self.requests = Counter("kaset_worker_requests", "Calls forwarded to worker replicas, by outcome.",
                                ["replica", "outcome"], registry=registry)
        if registry is not None:
            registry.register(_ReplicaCollector(self))

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        if self.settings.worker_registry == "redis":
            from kaset.workers.registry import RedisDiscovery

            self._tasks.append(asyncio.create_task(RedisDiscovery(self.settings, self).run()))
        static = [self.add(url) for url in self.settings.worker_urls]
        # One probe round before serving: requests for the workers' models go to them from the
        # first call on, rather than to this process until the first poll (bounded: 2 s).
        first = aiohttp.ClientTimeout(total=2.0)
        await asyncio.gather(*(self.probe(replica, first) for replica in static))
        for replica in static:
            self._tasks.append(asyncio.create_task(self._poll(replica)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # --- membership --------------------------------------------------------------------------

    def add(self, url: str) -> Replica:
        url = url.rstrip("/")
        replica = self.replicas.get(url)
        if replica is None:
            # KASET_BREAKER_FAILURES=0 turns breakers off, as for the routes.
            threshold = self.settings.breaker_failures or 1 << 62
            replica = Replica(url, Breaker(url, threshold, self.settings.breaker_cooldown_s))
            self.replicas[url] = replica
            log.info("worker %s added", url)
        return replica

    def remove(self, url: str) -> None:
        replica = self.replicas.pop(url, None)
        if replica is not None:
            replica.ready = replica.up = False
            log.info("worker %s removed", url)
            self._rebuild()

    def update(self, replica: Replica, *, up: bool, ready: bool, models: Iterable[str] | None = None) -> None:
        if ready != replica.ready:
            log.info("worker %s is %s", replica.url, "ready" if ready else "not ready")
        replica.up, replica.ready = up, ready
        if models is not None:
            new = tuple(sorted(models))
            if new != replica.models:
                replica.models = new
                replica.names = frozenset(self._names(new))
                self._rebuild()

    def _names(self, models: Iterable[str]) -> Iterator[str]:
        for name in models:
            yield name
            spec = self.catalog.get(name)
            if spec is not None:
                yield spec.id
                yield spec.key
                yield from spec.aliases

    def _rebuild(self) -> None:
        table: dict[str, list[Replica]] = {}
        for replica in self.replicas.values():
            for name in replica.names:
                table.setdefault(name, []).append(replica)
        self.models = table

    # --- choosing ----------------------------------------------------------------------------

    def pick(self, name: str, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The ready replica serving `name` with the fewest calls outstanding (ties rotate) whose
        breaker admits a call; None when there is none."""
        candidates = [r for r in self.models.get(name, ()) if r.ready and r not in exclude]
        while candidates:
            self._rotate += 1
            start = self._rotate % len(candidates)
            ordered = candidates[start:] + candidates[:start]
            best = min(ordered, key=lambda r: r.outstanding)
            if best.breaker.admit():
                return best
            candidates.remove(best)
        return None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # --- static discovery --------------------------------------------------------------------

    async def _poll(self, replica: Replica) -> None:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.settings.worker_poll_interval_s))
        while replica.url in self.replicas:
            await asyncio.sleep(self.settings.worker_poll_interval_s)
            await self.probe(replica, timeout)

    async def probe(self, replica: Replica, limit: aiohttp.ClientTimeout | None = None) -> None:
        """One readiness poll: 200 ready, anything else (or no answer) not ready."""
        assert self.session is not None
        try:
            async with self.session.get(f"{replica.url}/health/ready", headers=self.headers(),
                                        timeout=limit or aiohttp.ClientTimeout(total=1.0)) as resp:
                body = await resp.json(content_type=None)
            models = body.get("models") if isinstance(body, dict) else None
            self.update(replica, up=True, ready=resp.status == 200,
                        models=list(models) if isinstance(models, dict) else None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            if replica.up:
                log.warning("worker %s does not answer its readiness probe", replica.url)
            self.update(replica, up=False, ready=False)


class _ReplicaCollector(Collector):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("kaset_worker_replica_up", "1 when the replica answers its probe.", labels=["replica"])
        ready = GaugeMetricFamily("kaset_worker_replica_ready", "1 when the replica takes traffic.",
                                  labels=["replica"])
        outstanding = GaugeMetricFamily("kaset_worker_replica_outstanding", "Calls in flight to the replica.",
                                        labels=["replica"])
        for replica in list(self.pool.replicas.values()):
            up.add_metric([replica.url], 1.0 if replica.up else 0.0)
            ready.add_metric([replica.url], 1.0 if replica.ready else 0.0)
            outstanding.add_metric([replica.url], float(replica.outstanding))
        yield up
        yield ready
        yield outstanding


