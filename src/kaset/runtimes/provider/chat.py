"""The chat contract of a provider runtime (OpenAI-compatible servers, Gemini): `ProviderRuntime`.

Every chat entry point exists as a coroutine or an async iterator (`achat`, `achat_stream`,
`acomplete`, `acomplete_stream`, `achat_multimodal`, `achat_multimodal_stream`,
`adescribe_image`), and the blocking methods of the `ChatModel` contract (`chat`,
`chat_stream`, ...) run those very coroutines on the runtime's loop thread; request building,
reply parsing and error mapping exist once. A subclass implements the two coroutines both ways
run (`_agenerate`, `_agenerate_stream`): its wire format.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import ChatModel, Generation, GenerationChunk, GenerationParams
from kaset.runtimes.provider.client import ProviderClient

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

# OpenAI-shaped messages whose content is a string or a list of parts (text, image_url).
Messages = list[dict[str, Any]]

DEFAULT_CONTEXT_LENGTH = 32_768


@runtime_checkable
class VisionChat(Protocol):
    """A chat runtime that may take images: what the describe service and the chat route look
    for. `vision` says whether this model is configured to accept them."""

    vision: bool

    def chat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation: ...

    def chat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> Iterator[GenerationChunk]: ...

    def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation: ...


class ProviderRuntime(ProviderClient, ChatModel):
    """Base of the chat provider runtimes (OpenAI-compatible servers, Gemini).

    params, besides ProviderClient's: model (the upstream model name, required), vision (the
    model accepts images), context_length (informational, default 32768).

    Async-native: the `a`-methods run on the caller's event loop (see `kaset.runtimes.provider`);
    the blocking ones run the same coroutines on the runtime's loop thread. A stream method
    returns an async generator that has not sent anything yet (its input is checked at the
    call): iterate it on one loop, and `aclose()` it (`contextlib.aclosing`) to stop early,
    which closes the upstream response.
    """

    async_native: ClassVar[bool] = True
    default_vision: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.upstream_model = str(self.params.get("model") or "")
        self.vision = bool(self.params.get("vision", self.default_vision))

    def _check_more_params(self) -> None:
        if not self.upstream_model:
            raise ModelUnavailable(f"Model '{self.spec.id}': params.model (the provider's model name) is missing.")

    def _unknown_route(self) -> str:
        return f"the model '{self.upstream_model}' or the route"

    @property
    def context_length(self) -> int:
        return int(self.params.get("context_length", DEFAULT_CONTEXT_LENGTH))

    # --- what subclasses implement: the coroutines both paths run ---------------------------

    async def _agenerate(self, messages: Messages, params: GenerationParams) -> Generation:
        raise NotImplementedError

    def _agenerate_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Build the request now (bad input raises here, at the call) and return the async
        generator that sends it and yields the chunks."""
        raise NotImplementedError

    # --- async, on the caller's event loop ----------------------------------------------------

    async def achat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return await self._agenerate(list(messages), params)

    def achat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._agenerate_stream(list(messages), params)

    async def acomplete(self, prompt: str, params: GenerationParams) -> Generation:
        """Text completion; this default sends the prompt as one user turn (for providers with
        no raw completion route)."""
        return await self._agenerate([{"role": "user", "content": prompt}], params)

    def acomplete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._agenerate_stream([{"role": "user", "content": prompt}], params)

    async def achat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation:
        """Chat whose message contents may be lists of OpenAI parts (text, image_url)."""
        self._check_images(messages)
        return await self._agenerate(messages, params)

    def achat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        self._check_images(messages)
        return self._agenerate_stream(messages, params)

    async def adescribe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        """Ask the provider about one JPEG photo, sent inline as a data URL part."""
        return await self.achat_multimodal(_image_messages(image_jpeg, prompt), params)

    # --- blocking: the same coroutines, on the runtime's loop thread -------------------------

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return self._call(self.achat(messages, params))

    def chat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.achat_stream(messages, params))

    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return self._call(self.acomplete(prompt, params))

    def complete_stream(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.acomplete_stream(prompt, params))

    def chat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation:
        """Chat whose message contents may be lists of OpenAI parts (text, image_url)."""
        self._check_images(messages)
        return self._call(self._agenerate(messages, params))

    def chat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.achat_multimodal_stream(messages, params))

    def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        """Ask the provider about one JPEG photo, sent inline as a data URL part."""
        return self.chat_multimodal(_image_messages(image_jpeg, prompt), params)

    def _check_images(self, messages: Messages) -> None:
        if not self.vision and has_images(messages):
            raise InvalidRequest(
                f"The model '{self.spec.id}' is not configured to accept images (params.vision is false).",
                param="messages",
            )


def jpeg_data_url(image_jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode("ascii")


def _image_messages(image_jpeg: bytes, prompt: str) -> Messages:
    return [{"role": "user", "content": [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": jpeg_data_url(image_jpeg)}},
    ]}]


def has_images(messages: Messages) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                         for p in m["content"]) for m in messages)


def finish_reason(value: Any) -> Literal["stop", "length"]:
    """OpenAI-style finish reason from a provider's: only running out of tokens is "length"."""
    return "length" if str(value).lower() in ("length", "max_tokens") else "stop"
