"""The contracts every runtime implements: one small interface per task.

A runtime wraps one engine (faster-whisper, Piper, llama.cpp, ...). Its methods are
*blocking*: the model manager runs them in the model's own bounded executor, never on
the event loop. A runtime raises `kaset.errors.InvalidRequest` (or another KasetError)
for input it cannot serve, so the client gets a 4xx instead of a crash.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

# Re-exported: callers name tasks as kaset.runtimes.base.Task.
from kaset.tasks import ALL_TASKS as ALL_TASKS
from kaset.tasks import Task as Task

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec


class Runtime(abc.ABC):
    """A model instance of one engine. Constructed cheaply; `load()` does the heavy work."""

    # Calls so cheap (microseconds, no I/O) that a thread hop would cost more than the call
    # itself run on the event loop instead of the model's executor. Real models never do.
    inline: bool = False

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        self.spec = spec
        self.model_dir = model_dir
        self.params: dict[str, Any] = dict(spec.params)

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights into memory. Blocking; may take seconds."""

    def unload(self) -> None:
        """Release the model's memory. The default drops references and lets GC work."""

    def warmup(self) -> None:
        """Run one tiny inference so the first real request does not pay for lazy init."""


# --- transcribe -----------------------------------------------------------------------------

SAMPLE_RATE_ASR = 16_000


@dataclass
class TranscribeOptions:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    # "translate" asks Whisper to translate the speech into English.
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = False


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None


@dataclass
class Transcription:
    text: str
    language: str
    duration: float
    segments: list[Segment]


class Transcriber(Runtime):
    @abc.abstractmethod
    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcription:
        """`audio` is mono float32 PCM at 16 kHz in [-1, 1]."""


# --- synthesize -----------------------------------------------------------------------------


@dataclass
class Voice:
    id: str
    language: str
    name: str = ""


class Synthesizer(Runtime):
    @abc.abstractmethod
    def voices(self) -> list[Voice]:
        """The voices this model speaks with; the first one is the default."""

    @abc.abstractmethod
    def sample_rate(self, voice: str | None) -> int:
        """Sample rate of the PCM that `synthesize` yields for this voice."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]:
        """Yield mono signed 16-bit little-endian PCM, a sentence (or so) at a time.

        `voice=None` means the default voice; an unknown voice raises InvalidRequest.
        `speed` is 0.25-4.0, 1.0 normal.
        """


# --- translate ------------------------------------------------------------------------------


class Translator(Runtime):
    @abc.abstractmethod
    def pairs(self) -> list[tuple[str, str]]:
        """Supported (source, target) pairs as ISO 639-1 codes where one exists."""

    @abc.abstractmethod
    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        """Translate each text; an unsupported pair raises InvalidRequest."""


# --- chat / completion ----------------------------------------------------------------------


# What a chat runtime may honour beyond the basics every one takes (messages, temperature, top_p,
# max_tokens, stop, seed), named in `ChatModel.chat_options`: "response_format" (the reply
# constrained to JSON, or the request's response_format passed upstream), "logprobs" (token log
# probabilities), "penalties" (frequency_penalty, presence_penalty). The API refuses a request
# that needs one its model lacks, naming the field, rather than dropping it.
ChatOption = Literal["response_format", "logprobs", "penalties"]


@dataclass
class GenerationParams:
    max_tokens: int | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # A JSON schema the reply must follow. Runtimes that can constrain sampling (llama.cpp, via a
    # grammar built from the schema) do; others ignore it, so callers still validate the reply.
    json_schema: dict[str, Any] | None = None
    # OpenAI's response_format as the client sent it ({"type": "json_object"} or a json_schema
    # one), for runtimes that pass it upstream; runtimes that constrain sampling themselves read
    # `json_schema`, which the API sets from it.
    response_format: dict[str, Any] | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Report each generated token's log probability and its `top_logprobs` (0-20) likeliest alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    # Sample exactly as every other run with this seed: llama.cpp then evaluates the prompt afresh
    # instead of reusing a cached prefix, whose re-evaluated last token comes out slightly different
    # and can tip a sampled token. Costs the prompt's evaluation; the API sets it for a client's
    # seeded, sampled request (pipelines keep the cache).
    reproducible: bool = False


@dataclass
class TopLogprob:
    token: str
    logprob: float
    token_bytes: list[int]


@dataclass
class TokenLogprob:
    """A generated token: its text, its log probability under the model (the raw distribution,
    before a grammar or the sampler settings narrow it), and the likeliest tokens in its place."""

    token: str
    logprob: float
    token_bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)
    # Where the token's text starts in the reply (characters).
    text_offset: int = 0


@dataclass
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    # One per generated token when `GenerationParams.logprobs` asked for them.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationChunk:
    """One streamed piece. The last chunk has `finish_reason` set and the token counts."""

    text: str
    finish_reason: Literal["stop", "length"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The tokens whose text starts in this piece, when `GenerationParams.logprobs` asked for them.
    logprobs: list[TokenLogprob] | None = None


class ChatModel(Runtime):
    """Messages are OpenAI-shaped dicts with string content: {"role", "content"}."""

    # True when the runtime constrains sampling to `GenerationParams.json_schema`.
    supports_json_schema: bool = False
    # The options (ChatOption) this runtime honours beyond the basics.
    chat_options: frozenset[ChatOption] = frozenset()

    @abc.abstractmethod
    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation: ...

    @abc.abstractmethod
    def chat_stream(
        self, messages: list[dict[str, str]], params: GenerationParams
    ) -> Iterator[GenerationChunk]: ...

    @abc.abstractmethod
    def complete(self, prompt: str, params: GenerationParams) -> Generation: ...

    @abc.abstractmethod
    def complete_stream(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]: ...

    @property
    @abc.abstractmethod
    def context_length(self) -> int: ...


# --- embed ----------------------------------------------------------------------------------


@dataclass
class Embeddings:
    vectors: np.ndarray  # shape (n, dim), float32, L2-normalised
    prompt_tokens: int
    # Tokens of each text, when the engine counts them: lets a batched call that merged
    # several requests bill each request exactly (kaset.registry.batching).
    token_counts: list[int] | None = None


class Embedder(Runtime):
    @abc.abstractmethod
    def embed(self, texts: list[str]) -> Embeddings: ...

    @property
    @abc.abstractmethod
    def dimensions(self) -> int: ...


# --- classify (images) ----------------------------------------------------------------------


class ImageClassifier(Runtime):
    """Image classification. Preprocessing (resize, crop, normalisation, layout) is declared
    in the model's catalog params, so a new model of a known architecture needs no code."""

    @property
    @abc.abstractmethod
    def labels(self) -> list[str]:
        """Class names, index-aligned with the probabilities `classify` returns."""

    @abc.abstractmethod
    def classify(self, images: list[np.ndarray]) -> np.ndarray:
        """`images` are RGB uint8 arrays of shape (H, W, 3), any size; returns float32
        probabilities of shape (len(images), len(labels)), one batch call for all of them."""


TASK_CONTRACTS: dict[Task, type[Runtime]] = {
    "transcribe": Transcriber,
    "synthesize": Synthesizer,
    "translate": Translator,
    "chat": ChatModel,
    "embed": Embedder,
    "classify": ImageClassifier,
}
