"""The model-call seam: what every caller (pipelines, voice, jobs, API routers) holds to call a
model, wherever the model runs.

`Router.call(name, task, fn)` resolves a name (aliases, A/B targets, fallbacks, breakers) to a
`ModelHandle` and runs `fn(handle)`. A handle has one typed async method per task, so a caller
never touches an engine or a thread. Two implementations:

- in this process: `kaset.registry.loaded_model.LoadedModel` (the model's executor threads, its
  admission limits and dynamic batcher);
- on a kaset worker: `kaset.workers.remote.RemoteHandle` (the worker's internal task API, over
  the gateway's one aiohttp session, on the event loop).

Fallbacks and breakers therefore span local and remote models alike, and a gateway with no
models of its own runs the Crop Guardian and the voice assistant against its workers.

What a model is (labels, voices, language pairs, context length) comes from `info()`, asked
once per model and cached by the implementation: a remote worker answers it in one call.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kaset.errors import InvalidRequest

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec
    from kaset.runtimes.base import (
        Embeddings,
        Generation,
        GenerationChunk,
        GenerationParams,
        Task,
        TranscribeOptions,
        Transcription,
        Voice,
    )

Messages = list[dict[str, str]]
# Messages whose contents may be lists of OpenAI parts (text, image_url as a data URL).
PartMessages = list[dict[str, Any]]


@dataclass
class ModelInfo:
    """What callers ask about a model beyond calling it; fields for tasks it does not do stay empty."""

    labels: list[str] = field(default_factory=list)
    voices: list[Voice] = field(default_factory=list)
    # Sample rate of each voice's PCM ("" is the default voice).
    sample_rates: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    context_length: int = 0
    supports_json_schema: bool = False
    # The OpenAI options a chat model honours beyond the basics (runtimes.base.ChatOption).
    chat_options: list[str] = field(default_factory=list)
    # A chat model that takes photos (describe_image, image parts).
    vision: bool = False
    dimensions: int = 0

    def sample_rate(self, voice: str | None) -> int:
        rate = self.sample_rates.get(voice or "") or self.sample_rates.get("")
        if rate is None:
            raise InvalidRequest(f"Unknown voice '{voice}'.", param="voice", code="unknown_voice")
        return rate


class ModelHandle(abc.ABC):
    """One model, ready to be called. Methods of tasks the model does not do raise."""

    spec: ModelSpec
    # How clients name the model (its id, or id@version for a non-preferred version).
    name: str
    # Served by another process (a kaset worker) rather than this one.
    remote: bool = False

    @abc.abstractmethod
    async def info(self) -> ModelInfo: ...

    @abc.abstractmethod
    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcription:
        """16 kHz mono float32 samples to text."""

    @abc.abstractmethod
    async def synthesize(self, text: str, voice: str | None, speed: float) -> bytes:
        """The whole utterance as mono 16-bit PCM at `info().sample_rate(voice)`."""

    @abc.abstractmethod
    def synthesize_stream(self, text: str, voice: str | None, speed: float) -> AsyncIterator[bytes]:
        """The utterance as mono 16-bit PCM pieces (about a sentence each) as they are spoken;
        stopping early stops the synthesis."""

    @abc.abstractmethod
    async def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...

    @abc.abstractmethod
    async def chat(self, messages: Messages, params: GenerationParams) -> Generation: ...

    @abc.abstractmethod
    def chat_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """The reply as it is generated; stopping early stops the generation."""

    @abc.abstractmethod
    async def complete(self, prompt: str, params: GenerationParams) -> Generation:
        """A raw text completion of `prompt` (no chat template)."""

    @abc.abstractmethod
    def complete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]: ...

    @abc.abstractmethod
    async def chat_parts(self, messages: PartMessages, params: GenerationParams) -> Generation:
        """A vision chat model's reply to messages that carry images (`info().vision`)."""

    @abc.abstractmethod
    def chat_parts_stream(self, messages: PartMessages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        ...

    @abc.abstractmethod
    async def embed(self, texts: list[str]) -> Embeddings:
        """All texts in one call of their own (an index build)."""

    @abc.abstractmethod
    async def embed_each(self, texts: list[str]) -> list[Embeddings]:
        """Per-text embeddings, merged with concurrent callers' texts when the model batches."""

    @abc.abstractmethod
    async def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per-image probabilities (RGB uint8 arrays in), batched like `embed_each`."""

    @abc.abstractmethod
    async def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        """A vision chat model's answer about one photo."""


class RemoteModels(Protocol):
    """Models served by other processes, as the router sees them (kaset.workers.remote)."""

    def serves(self, name: str) -> bool:
        """Whether some replica, ready or not, serves `name` (an id, alias or id@version): its
        calls go to the workers, and while none is ready they fail with a clear 503 rather than
        loading the model in the gateway."""

    def ready(self, name: str) -> bool:
        """Whether a ready replica serves `name` now (readiness probes say so)."""

    def handle(self, name: str, spec: ModelSpec, task: Task) -> ModelHandle: ...

    def specs(self) -> Iterable[ModelSpec]:
        """Every model some ready replica serves."""
