"""Chat and completions served by any OpenAI-compatible server: OpenAI, vLLM, Ollama, another Kaset.

A provider adapter: the model runs elsewhere, Kaset forwards `POST {base_url}/chat/completions`
and `POST {base_url}/completions` (plain JSON, or server-sent events when streaming) and maps
the answer and the errors back onto its own contracts. `base_url` includes the API version,
as in the OpenAI SDK: `https://api.openai.com/v1`, `http://localhost:11434/v1` (Ollama),
`http://gpu-box:8000/v1` (vLLM).

Why aiohttp and not the `openai` SDK (installed, and it would parse the same JSON): the SDK
brings httpx, a second HTTP stack with its own pool and its own retry policy (it silently
retries 429 and 5xx twice by default), while retries and fallbacks are the gateway's
decision, and aiohttp is what the gateway's other upstream hops use (measured ~5x less
per-hop overhead than httpx here). The wire format is small enough to handle directly.
See `kaset.runtimes.provider` for the two ways in (async on the caller's loop, blocking on the
runtime's loop thread), secrets and error mapping: this module only builds the requests and
reads the replies, as coroutines both ways share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from kaset.runtimes.base import ChatOption, Generation, GenerationChunk, GenerationParams
from kaset.runtimes.provider import Messages, ProviderRuntime, UpstreamErrorInfo, finish_reason


class OpenAICompatibleRuntime(ProviderRuntime):
    """params (besides the common ones in ProviderRuntime): max_tokens_field (default
    "max_tokens"; OpenAI's reasoning models want "max_completion_tokens"), stream_usage (ask
    for token counts in streams with stream_options.include_usage, default true; turn it off
    for servers that reject the field)."""

    provider: ClassVar[str] = "openai-compatible"
    # Passed upstream as the client sent them; the upstream refuses what it cannot do.
    chat_options: frozenset[ChatOption] = frozenset({"response_format", "penalties"})

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def _body(self, params: GenerationParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.upstream_model, "temperature": params.temperature,
                                "top_p": params.top_p, "stream": stream}
        if params.max_tokens is not None:
            body[str(self.params.get("max_tokens_field", "max_tokens"))] = params.max_tokens
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.response_format is not None:
            body["response_format"] = params.response_format
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if stream and self.params.get("stream_usage", True):
            body["stream_options"] = {"include_usage": True}
        return body

    # --- chat ----------------------------------------------------------------------------------

    async def _agenerate(self, messages: Messages, params: GenerationParams) -> Generation:
        body = {**self._body(params, stream=False), "messages": messages}
        reply = await self._post_json(self._url("chat/completions"), body)
        choice = self._first_choice(reply)
        message = choice.get("message") or {}
        return _generation(_text(message.get("content")), choice, reply)

    def _agenerate_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        body = {**self._body(params, stream=True), "messages": messages}
        return self._chunks(self._url("chat/completions"), body, chat=True)

    # --- text completion (the blocking complete() and complete_stream() run these) -------------

    async def acomplete(self, prompt: str, params: GenerationParams) -> Generation:
        body = {**self._body(params, stream=False), "prompt": prompt}
        reply = await self._post_json(self._url("completions"), body)
        choice = self._first_choice(reply)
        return _generation(_text(choice.get("text")), choice, reply)

    def acomplete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        body = {**self._body(params, stream=True), "prompt": prompt}
        return self._chunks(self._url("completions"), body, chat=False)

    # --- wire format ---------------------------------------------------------------------------

    async def _chunks(self, url: str, body: dict[str, Any], chat: bool) -> AsyncIterator[GenerationChunk]:
        finish: Any = None
        usage: dict[str, Any] = {}
        async for event in self._post_sse(url, body):
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]  # the include_usage chunk comes last, with no choices
            for choice in event.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                piece = _text((choice.get("delta") or {}).get("content")) if chat else _text(choice.get("text"))
                if piece:
                    yield GenerationChunk(text=piece)
                finish = choice.get("finish_reason") or finish
        yield GenerationChunk(text="", finish_reason=finish_reason(finish),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))

    def _first_choice(self, reply: dict[str, Any]) -> dict[str, Any]:
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._bad_reply("a reply with no choices")
        choice: dict[str, Any] = choices[0]
        return choice

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        # OpenAI: {"error": {"message", "type", "param", "code"}}; Ollama and others: {"error": "text"}.
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str):
            return UpstreamErrorInfo(message=error)
        if not isinstance(error, dict):
            return UpstreamErrorInfo(message=str(body.get("detail", "")) if isinstance(body, dict) else "")
        code = str(error.get("code") or error.get("type") or "")
        return UpstreamErrorInfo(message=str(error.get("message") or ""), status=code,
                                 auth=code in ("invalid_api_key", "authentication_error"))


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list (some servers send parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _generation(text: str, choice: dict[str, Any], reply: dict[str, Any]) -> Generation:
    usage = reply.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Generation(text=text, finish_reason=finish_reason(choice.get("finish_reason")),
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))
