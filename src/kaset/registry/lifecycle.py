"""Model lifecycle policy: idle unload, LRU eviction under a memory budget, pinning, and the
per-model bounded wait queue.

`ModelManager` (kaset.registry.manager) applies the policy; this module holds the rules and the
pieces that do not need the manager:

* **Idle unload.** A loaded model with no call for its TTL (`idle_unload_s` in the catalog, else
  `KASET_MODEL_IDLE_UNLOAD_S`; 0 means never) is unloaded by a sweep task the app's lifespan
  runs (`run_idle_sweeper`). It loads again on its next request.
* **Memory budget.** With `KASET_MODEL_MEMORY_BUDGET_MB` set, loading a model that would take
  the loaded models past the budget first unloads the least recently used models that are idle
  (no call running or waiting) and not pinned; if that cannot make room, the load is refused
  with 503 `memory_budget_exceeded`, and nothing is unloaded in vain. A model's memory is
  measured when it loads: how much the process's resident memory grew while it loaded and
  warmed up, or the size of its files if that is larger (the allocator may reuse memory a
  previous model freed, so RSS growth alone can read near zero). Before a model's first load
  the size of its files stands in.
* **Pinning.** A pinned model (`pinned: true` in the catalog, or named in `KASET_PINNED_MODELS`)
  is never unloaded for idleness or to make room. An admin can still unload it explicitly.
* **Never while busy.** A model with a call running or waiting (`in_flight` counts both, and
  the requests waiting in its dynamic batcher) is never unloaded for idleness or for room.
* **Bounded queue.** A model runs `max_concurrent` calls at once; at most `max_queue` more may
  wait (catalog field, else `KASET_MODEL_MAX_QUEUE`, else 32 per `max_concurrent`). A call
  beyond that is refused at once with 429 `model_overloaded` and a Retry-After estimated from
  the model's recent call time and the queue length, instead of waiting without bound. For a
  batched model a running call holds up to `max_batch_size` requests, so it admits
  `max_concurrent * max_batch_size + max_queue` requests. Inline runtimes (echo) never queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kaset.errors import KasetError, ModelUnavailable

if TYPE_CHECKING:
    from kaset.config import Settings
    from kaset.registry.catalog import Catalog, ModelSpec

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Waiting calls allowed per executor slot when neither the catalog nor the settings say.
DEFAULT_QUEUE_PER_SLOT = 32
# The idle sweep runs this often relative to the shortest idle TTL, within these bounds.
SWEEP_FRACTION = 0.25
MIN_SWEEP_INTERVAL_S = 0.05
MAX_SWEEP_INTERVAL_S = 30.0

# Why a model was loaded or unloaded (the `reason` label of the lifecycle counters).
LOAD_REASONS = ("startup", "request", "admin")
UNLOAD_REASONS = ("idle", "lru", "admin", "budget")


class ModelOverloaded(KasetError):
    """A model's wait queue is full: the client should come back after `retry_after` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "model_overloaded"

    def __init__(self, message: str, *, retry_after: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class MemoryBudgetExceeded(ModelUnavailable):
    """Loading the model would take the loaded models past the memory budget, and unloading the
    idle unpinned ones cannot make room."""

    code = "memory_budget_exceeded"


class LifecycleObserver(Protocol):
    """What the manager reports (kaset.metrics.Metrics implements it)."""

    def model_loaded(self, model: str, reason: str, seconds: float) -> None: ...

    def model_unloaded(self, model: str, reason: str) -> None: ...

    def batch_size(self, model: str, size: int) -> None: ...

    def limit_rejected(self, limit: str, scope: str = "key") -> None: ...


@dataclass(frozen=True)
class LifecyclePolicy:
    """The server-wide lifecycle settings; catalog fields override them per model."""

    # Seconds without a call before a model is unloaded; 0: never (unless its catalog entry says).
    idle_unload_s: float = 0.0
    # Memory all loaded models may take together; 0: no budget.
    memory_budget_bytes: int = 0
    # Model ids, aliases or id@version that are never unloaded by policy.
    pinned: frozenset[str] = field(default_factory=frozenset)
    # Waiting calls per model when its catalog entry gives no max_queue; None: 32 per slot.
    max_queue: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LifecyclePolicy:
        budget = settings.model_memory_budget_mb or 0
        return cls(idle_unload_s=settings.model_idle_unload_s or 0.0, memory_budget_bytes=int(budget * MB),
                   pinned=frozenset(settings.pinned_models), max_queue=settings.model_max_queue)

    def idle_ttl(self, spec: ModelSpec) -> float:
        """Seconds of idleness after which the model is unloaded; 0 means never."""
        return spec.idle_unload_s if spec.idle_unload_s is not None else self.idle_unload_s

    def is_pinned(self, spec: ModelSpec, catalog: Catalog) -> bool:
        if spec.pinned:
            return True
        for name in self.pinned:
            if name == spec.key:
                return True
            model_id, _, version = name.partition("@")
            if catalog.aliases.get(model_id, model_id) == spec.id and version in ("", spec.version):
                return True
        return False

    def max_queue_for(self, spec: ModelSpec) -> int:
        if spec.max_queue is not None:
            return spec.max_queue
        if self.max_queue is not None:
            return self.max_queue
        return DEFAULT_QUEUE_PER_SLOT * spec.max_concurrent

    def sweep_interval(self, catalog: Iterable[ModelSpec]) -> float | None:
        """How often the idle sweep runs, or None when no model can ever be idle-unloaded."""
        ttls = [ttl for ttl in (self.idle_ttl(spec) for spec in catalog) if ttl > 0]
        if not ttls:
            return None
        return min(MAX_SWEEP_INTERVAL_S, max(MIN_SWEEP_INTERVAL_S, min(ttls) * SWEEP_FRACTION))


# --- memory -----------------------------------------------------------------------------------


def process_rss_bytes() -> int:
    """This process's resident memory (psutil, else /proc/self/statm; 0 if neither works)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def folder_bytes(folder: Path | None) -> int:
    """Total size of the files under `folder` (0 for None or a missing folder)."""
    if folder is None:
        return 0
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
    return total


def mb(size: int) -> float:
    return round(size / MB, 1)


# --- the idle sweep ---------------------------------------------------------------------------


class IdleSweepable(Protocol):
    """What the idle sweep needs of the models it sweeps (kaset.registry.manager.ModelManager
    implements it; this module stays below the manager)."""

    @property
    def policy(self) -> LifecyclePolicy: ...

    @property
    def catalog(self) -> Iterable[ModelSpec]: ...

    async def sweep_idle(self) -> list[str]: ...


async def run_idle_sweeper(manager: IdleSweepable, interval: float) -> None:
    """Unload idle models every `interval` seconds until cancelled (the app's lifespan owns it)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await manager.sweep_idle()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("idle model sweep failed")


def start_idle_sweeper(manager: IdleSweepable) -> asyncio.Task[None] | None:
    """The sweep task, or None when no model has an idle TTL."""
    interval = manager.policy.sweep_interval(manager.catalog)
    if interval is None:
        return None
    return asyncio.create_task(run_idle_sweeper(manager, interval), name="kaset-idle-sweep")
