"""A weightless model that echoes its input, for measuring the gateway's own overhead.

Everything here must stay close to free: whatever time a benchmark spends on the echo
model is time spent in the gateway, so no tokenizer, no sleeping, no copies beyond the
reply. "Tokens" are whitespace-separated words. The runtime holds no state, so any
number of calls may run at once (the catalog gives it max_concurrent 64).

Streams yield the reply a word at a time (each piece carries the whitespace before it,
so the pieces concatenate to the non-streamed text), then one empty chunk with the
finish reason and the counts, like the other chat runtimes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from kaset.errors import InvalidRequest
from kaset.runtimes.base import (
    ChatModel,
    Embedder,
    Embeddings,
    Generation,
    GenerationChunk,
    GenerationParams,
)

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

DEFAULT_DIMENSIONS = 8
CONTEXT_LENGTH = 1 << 20

_PIECES = re.compile(r"\s*\S+")


class EchoRuntime(ChatModel, Embedder):
    """params: dimensions (embedding size, default 8)."""

    inline = True

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self._dimensions = int(self.params.get("dimensions", DEFAULT_DIMENSIONS))

    def load(self) -> None:
        """Nothing to load."""

    # --- chat --------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return CONTEXT_LENGTH

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return self._generate(_last_user_content(messages), _count_messages(messages), params)

    def chat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        return _stream(self._generate(_last_user_content(messages), _count_messages(messages), params))

    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return self._generate(prompt, len(prompt.split()), params)

    def complete_stream(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        return _stream(self._generate(prompt, len(prompt.split()), params))

    def _generate(self, text: str, prompt_tokens: int, params: GenerationParams) -> Generation:
        finish: Literal["stop", "length"] = "stop"
        for stop in params.stop:
            if stop:
                cut = text.find(stop)
                if cut >= 0:
                    text = text[:cut]
        if params.max_tokens is not None:
            pieces = _PIECES.findall(text)
            if len(pieces) > params.max_tokens:
                text = "".join(pieces[: params.max_tokens])
                finish = "length"
        return Generation(
            text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=len(text.split())
        )

    # --- embed -------------------------------------------------------------------------

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: list[str]) -> Embeddings:
        if not texts:
            raise InvalidRequest("The input must contain at least one text.", param="input")
        dim = self._dimensions
        digests = bytearray()
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"Input {i} is an empty string; it cannot be embedded.", param="input")
            # blake2b: deterministic across processes, unlike hash(), and fast.
            digests += hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=2 * dim).digest()
        raw = np.frombuffer(bytes(digests), dtype="<i2").reshape(len(texts), dim).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        # An all-zero digest is a 2**-128 event, but a NaN vector would still be wrong.
        raw[norms[:, 0] == 0, 0] = 1.0
        norms[norms == 0] = 1.0
        counts = [len(t.split()) for t in texts]
        return Embeddings(vectors=raw / norms, prompt_tokens=sum(counts), token_counts=counts)


def _last_user_content(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def _count_messages(messages: list[dict[str, str]]) -> int:
    return sum(len((m.get("content") or "").split()) for m in messages)


def _stream(generation: Generation) -> Iterator[GenerationChunk]:
    text = generation.text
    end = 0
    for match in _PIECES.finditer(text):
        end = match.end()
        yield GenerationChunk(text=match.group())
    if end < len(text):
        yield GenerationChunk(text=text[end:])
    yield GenerationChunk(
        text="",
        finish_reason=generation.finish_reason,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
    )
