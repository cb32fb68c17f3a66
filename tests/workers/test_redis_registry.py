"""Discovery through Redis: a worker appears, goes unready, disappears; Redis lost → last known kept."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from kaset.config import Settings
from kaset.registry.catalog import Catalog
from kaset.workers.pool import WorkerPool
from kaset.workers.registry import RedisAnnouncer
from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.redis import redis_prefix, redis_url
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.worker_process import worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, replica_state, wait_replica

__all__ = ["redis_prefix", "redis_url"]


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _settings(url: str, prefix: str, **extra: Any) -> Settings:
    return Settings(**{"redis_url": url, "redis_prefix": prefix, "worker_registry": "redis", "worker_heartbeat_s": 0.2,
                       "worker_ttl_s": 0.6, **extra})


async def test_worker_appears_goes_unready_and_disappears(redis_url: str, redis_prefix: str) -> None:
    ready = [False]
    worker = RedisAnnouncer(_settings(redis_url, redis_prefix, worker_advertise_url="http://w1:9000"), ["echo"],
                            lambda: ready[0])
    pool = WorkerPool(_settings(redis_url, redis_prefix), Catalog.load())
    await pool.start()
    try:
        worker.start()
        await _until(lambda: "http://w1:9000" in pool.replicas)
        replica = pool.replicas["http://w1:9000"]
        assert pool.models["echo"] == [replica]
        assert not replica.ready and pool.pick("echo") is None  # announced but not ready: no traffic
        ready[0] = True
        await _until(lambda: replica.ready)
        assert pool.pick("echo") is replica
        ready[0] = False
        await _until(lambda: not replica.ready)
        await worker.close()  # a clean stop deletes its key
        await _until(lambda: "http://w1:9000" not in pool.replicas)
        assert pool.pick("echo") is None
    finally:
        await pool.close()


async def test_dead_worker_expires(redis_url: str, redis_prefix: str) -> None:
    worker = RedisAnnouncer(_settings(redis_url, redis_prefix, worker_advertise_url="http://w2:9000"), ["echo"],
                            lambda: True)
    pool = WorkerPool(_settings(redis_url, redis_prefix), Catalog.load())
    await pool.start()
    try:
        await worker.announce()  # one heartbeat, then silence (as if SIGKILLed)
        await _until(lambda: "http://w2:9000" in pool.replicas)
        await _until(lambda: "http://w2:9000" not in pool.replicas, timeout_s=3)
    finally:
        await worker.redis.aclose()
        await pool.close()


async def test_redis_lost_keeps_last_known_workers_for_the_grace_period(redis_url: str, redis_prefix: str) -> None:
    parsed = urlparse(redis_url)
    proxy = TcpProxy(parsed.port or 6379, parsed.hostname or "127.0.0.1")
    proxy.start()
    worker = RedisAnnouncer(_settings(redis_url, redis_prefix, worker_advertise_url="http://w3:9000"), ["echo"],
                            lambda: True)
    gateway_redis = f"redis://127.0.0.1:{proxy.port}{parsed.path or '/0'}"
    pool = WorkerPool(_settings(gateway_redis, redis_prefix, worker_registry_grace_s=1.5), Catalog.load())
    await pool.start()
    try:
        worker.start()
        await _until(lambda: "http://w3:9000" in pool.replicas and pool.replicas["http://w3:9000"].ready)
        proxy.stop()  # the gateway loses Redis
        lost_at = time.monotonic()
        await asyncio.sleep(1.0)
        assert pool.pick("echo") is not None  # still served from the last known list
        await _until(lambda: "http://w3:9000" not in pool.replicas, timeout_s=5)
        assert time.monotonic() - lost_at >= 1.5
        proxy.start()  # Redis back: the worker, still announcing, comes back
        await _until(lambda: "http://w3:9000" in pool.replicas, timeout_s=5)
    finally:
        await worker.close()
        await pool.close()
        proxy.close()


def test_gateway_finds_worker_processes_in_redis(tmp_path: Path, models_dir: Path, redis_url: str,
                                                 redis_prefix: str) -> None:
    shared = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_REGISTRY": "redis", "KASET_REDIS_URL": redis_url,
              "KASET_REDIS_PREFIX": redis_prefix, "KASET_WORKER_HEARTBEAT_S": "0.3", "KASET_WORKER_TOKEN": TOKEN}
    with worker_process(tmp_path, "echo", shared) as worker:
        (tmp_path / "gw").mkdir()
        env = {**gateway_env(models_dir, []), **shared}
        with gateway_process(tmp_path / "gw", env) as gateway:
            wait_replica(gateway, worker.url)
            r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": "x"})
            assert r.status_code == 200, r.text
            worker.proc.send_signal(signal.SIGTERM)  # drains: unready at once, then its key is deleted
            assert worker.proc.wait(timeout=20) == 0
            deadline = time.monotonic() + 5
            while replica_state(gateway, worker.url) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert replica_state(gateway, worker.url) is None


async def test_drain_is_announced_at_once(redis_url: str, redis_prefix: str) -> None:
    ready = [True]
    # No heartbeat during the test: only announce_soon can tell.
    settings = _settings(redis_url, redis_prefix, worker_advertise_url="http://w4:9000", worker_heartbeat_s=30.0)
    worker = RedisAnnouncer(settings, ["echo"], lambda: ready[0])
    pool = WorkerPool(_settings(redis_url, redis_prefix), Catalog.load())
    await pool.start()
    try:
        worker.start()
        await _until(lambda: "http://w4:9000" in pool.replicas and pool.replicas["http://w4:9000"].ready)
        ready[0] = False
        worker.announce_soon()
        await _until(lambda: not pool.replicas["http://w4:9000"].ready, timeout_s=2)
    finally:
        await worker.close()
        await pool.close()
