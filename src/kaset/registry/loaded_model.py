"""A model loaded in this process: `LoadedModel`, the in-process `ModelHandle`.

Every loaded model has its own thread pool sized to its `max_concurrent`, so one slow model
never starves another and a model that is not thread-safe (llama.cpp) never sees two calls at
once. Blocking calls go through `LoadedModel.run`; generators (token streams, sentence-by-sentence
audio) go through `LoadedModel.stream`, which holds one executor slot for the whole stream.
Calls that take a list (classify images, embed texts) go through `LoadedModel.batch`, which
merges concurrent requests when the catalog entry asks for dynamic batching
(`kaset.registry.batching`). Async-native runtimes (HTTP upstreams) are awaited on the event
loop (`run_async`, `stream_async`) under the same admission limit.

Admission: a call is refused at once (429 `model_overloaded`) when the model's running slots and
its bounded wait queue are full (the policy is in `kaset.registry.lifecycle`). The manager
(`kaset.registry.manager`) creates, configures and tears down these objects.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.registry.batching import DynamicBatcher, batch_call
from kaset.registry.catalog import ModelSpec
from kaset.registry.handle import Messages, ModelHandle, ModelInfo, PartMessages
from kaset.registry.inference_time import add_inference_time
from kaset.registry.lifecycle import LifecycleObserver, ModelOverloaded
from kaset.runtimes.base import (
    ChatModel,
    Embedder,
    Embeddings,
    Generation,
    GenerationChunk,
    GenerationParams,
    ImageClassifier,
    Runtime,
    Synthesizer,
    TranscribeOptions,
    Transcriber,
    Transcription,
    Translator,
)

T = TypeVar("T")
R = TypeVar("R", bound=Runtime)

# Weight of the newest call in a model's mean call time (an exponential moving average).
CALL_TIME_WEIGHT = 0.2


@dataclass
class _End:
    """A streamed generator is finished (put on the queue by the producer thread)."""


@dataclass
class _Raised:
    """A streamed generator raised: the consumer re-raises `error`."""

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
            add_inference_time(time.perf_counter() - started)

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
            add_inference_time(time.perf_counter() - started)

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
            add_inference_time(time.perf_counter() - started)
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
            info.chat_options = sorted(chat.chat_options)
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
            add_inference_time(elapsed)

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
            add_inference_time(elapsed)
