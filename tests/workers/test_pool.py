"""The replica choice: least outstanding, ready only, breaker respected, aliases resolved."""

from __future__ import annotations

from typing import Any

from kaset.config import Settings
from kaset.registry.catalog import Catalog
from kaset.workers.pool import WorkerPool
from kaset.workers.remote import WorkerModels


def _pool(**extra: Any) -> WorkerPool:
    return WorkerPool(Settings(breaker_failures=1, breaker_cooldown_s=60, **extra), Catalog.load())


def test_least_outstanding_ready_replica_is_chosen() -> None:
    pool = _pool()
    a, b, c = (pool.add(f"http://w{i}:1") for i in range(3))
    for replica in (a, b, c):
        pool.update(replica, up=True, ready=True, models=["e5-small"])
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick("e5-small") is b
    b.ready = False
    assert pool.pick("e5-small") is c
    assert pool.pick("e5-small", exclude=[c]) is a
    # Aliases and the versioned name reach the same replicas.
    assert pool.pick("text-embedding-3-small") is c
    assert pool.pick("e5-small@1") is c
    assert pool.pick("whisper-tiny.en") is None


def test_ties_rotate_and_open_breakers_are_skipped() -> None:
    pool = _pool()
    a, b = pool.add("http://a:1"), pool.add("http://b:1")
    for replica in (a, b):
        pool.update(replica, up=True, ready=True, models=["echo"])
    assert {pool.pick("echo") for _ in range(4)} == {a, b}
    a.breaker.failed()  # threshold 1: open
    assert all(pool.pick("echo") is b for _ in range(4))
    b.breaker.failed()
    assert pool.pick("echo") is None


def test_removed_replica_leaves_the_table() -> None:
    pool = _pool()
    a = pool.add("http://a:1/")
    pool.update(a, up=True, ready=True, models=["echo"])
    assert pool.models["echo"] == [a]
    pool.remove("http://a:1")
    assert "echo" not in pool.models


def test_a_model_on_unready_replicas_is_served_there_but_not_ready() -> None:
    # Its calls still go to the workers (a clear 503 while none is ready, never a surprise load in
    # the gateway), while /v2/models/{m}/ready and the model listing say it is not ready.
    pool = _pool()
    a, b = pool.add("http://a:1"), pool.add("http://b:1")
    for replica in (a, b):
        pool.update(replica, up=True, ready=True, models=["echo"])
    models = WorkerModels(pool)
    assert models.serves("echo") and models.ready("echo") and [s.id for s in models.specs()] == ["echo"]
    a.ready = False
    assert models.ready("echo")
    b.ready = False
    assert models.serves("echo") and not models.ready("echo") and list(models.specs()) == []
    assert not models.serves("e5-small") and not models.ready("e5-small")
