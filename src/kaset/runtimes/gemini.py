"""Chat (and images) served by Google's Gemini API, through its REST interface.

A provider adapter. Requests go to `POST {base_url}/{api_version}/models/{model}:generateContent`
(or `:streamGenerateContent?alt=sse`, server-sent events whose data are the same response
objects, with no `[DONE]` marker) with the documented body: `contents` of `{role: user|model,
parts: [{text} | {inline_data: {mime_type, data}} | {file_data: {mime_type, file_uri}}]}`,
`systemInstruction`, and `generationConfig {temperature, topP, maxOutputTokens,
stopSequences, seed}`. Replies carry `candidates[0].content.parts[].text`, `finishReason`
and `usageMetadata {promptTokenCount, candidatesTokenCount}`; errors are
`{"error": {"code", "message", "status", "details"}}`.

OpenAI-shaped messages are translated: system/developer messages become the system
instruction, assistant turns become `model` turns, consecutive turns of one role are merged
(Gemini wants them to alternate), data-URL images become `inline_data` and http(s) image
URLs become `file_data` (Gemini fetches those itself). Gemini has no raw text completion,
so `complete()` sends the prompt as one user turn.

The key goes in the `x-goog-api-key` header, never in the `?key=` query parameter the API
also accepts: URLs end up in access logs and exception messages, headers do not.

Error mapping beyond the common one (`kaset.runtimes.provider`): an invalid key is a 400
with reason API_KEY_INVALID, treated as an authentication failure; a 429 RESOURCE_EXHAUSTED
carries its wait in a `google.rpc.RetryInfo` detail (`retryDelay: "13s"`) when there is no
Retry-After header; a reply blocked by safety filters (no candidates, or no text and
finishReason SAFETY and the like) is a 400 with code `content_filter`, not an empty answer.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from kaset.errors import InvalidRequest
from kaset.runtimes.base import Generation, GenerationChunk, GenerationParams
from kaset.runtimes.provider import Messages, ProviderRuntime, UpstreamErrorInfo, finish_reason

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"
MAX_STOP_SEQUENCES = 5
# Finish reasons that mean "the provider's filters withheld the answer".
BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})


class GeminiRuntime(ProviderRuntime):
    """params (besides the common ones in ProviderRuntime): base_url (default Google's
    endpoint), api_version (default v1beta). `vision` defaults to true: Gemini models take
    images."""

    provider: ClassVar[str] = "gemini"
    default_vision: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.base_url = str(self.params.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.upstream_model = self.upstream_model.removeprefix("models/")
        self.api_version = str(self.params.get("api_version", DEFAULT_API_VERSION))

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key} if self._api_key else {}

    def _url(self, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self.base_url}/{self.api_version}/models/{self.upstream_model}:{method}"

    # --- the two coroutines every entry point runs, async or blocking (see the base class);
    # complete() is the base's default: the prompt as one user turn -----------------------------

    async def _agenerate(self, messages: Messages, params: GenerationParams) -> Generation:
        reply = await self._post_json(self._url(stream=False), self._request(messages, params))
        text, finish = self._candidate_text(reply)
        prompt_tokens, completion_tokens = _usage(reply)
        return Generation(text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens)

    def _agenerate_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._chunks(self._request(messages, params))

    # --- request ---------------------------------------------------------------------------------

    def _request(self, messages: Messages, params: GenerationParams) -> dict[str, Any]:
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        for index, message in enumerate(messages):
            role = message.get("role")
            if role in ("system", "developer"):
                system.extend(p["text"] for p in _parts(message.get("content"), index) if "text" in p)
                continue
            parts = _parts(message.get("content"), index)
            if not parts:
                continue
            gemini_role = "model" if role == "assistant" else "user"
            if contents and contents[-1]["role"] == gemini_role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": gemini_role, "parts": parts})
        if not contents:
            raise InvalidRequest("Gemini needs at least one user or assistant message with content.",
                                 param="messages")
        body: dict[str, Any] = {"contents": contents, "generationConfig": _generation_config(params)}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        return body

    # --- reply -----------------------------------------------------------------------------------

    def _candidate_text(self, reply: dict[str, Any], final: bool = True) -> tuple[str, Literal["stop", "length"]]:
        candidates = reply.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = reply.get("promptFeedback") or {}
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                raise InvalidRequest(f"{self._who()} blocked the prompt ({feedback['blockReason']}).",
                                     code="content_filter")
            if final:
                raise self._bad_reply("a reply with no candidates")
            return "", "stop"
        candidate = candidates[0] if isinstance(candidates[0], dict) else {}
        content = candidate.get("content") or {}
        parts = (content.get("parts") or []) if isinstance(content, dict) else []
        # Thinking models may return their thoughts as parts marked "thought": not the answer.
        text = "".join(str(p.get("text") or "") for p in parts if isinstance(p, dict) and not p.get("thought"))
        reason = candidate.get("finishReason")
        if not text and reason in BLOCKED:
            raise InvalidRequest(f"{self._who()} withheld its answer (finishReason {reason}).",
                                 code="content_filter")
        return text, finish_reason(reason)

    async def _chunks(self, body: dict[str, Any]) -> AsyncIterator[GenerationChunk]:
        finish: Literal["stop", "length"] = "stop"
        usage = (0, 0)
        async for event in self._post_sse(self._url(stream=True), body):
            if "usageMetadata" in event:
                usage = _usage(event)  # cumulative: the last one counts
            text, reason = self._candidate_text(event, final=False)
            if text:
                yield GenerationChunk(text=text)
            candidates = event.get("candidates")
            if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict) \
                    and candidates[0].get("finishReason"):
                finish = reason  # only the event that ends the answer says why
        yield GenerationChunk(text="", finish_reason=finish, prompt_tokens=usage[0], completion_tokens=usage[1])

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return UpstreamErrorInfo()
        status = str(error.get("status") or "")
        info = UpstreamErrorInfo(message=str(error.get("message") or ""), status=status,
                                 auth=status == "UNAUTHENTICATED")
        for detail in error.get("details") or []:
            if not isinstance(detail, dict):
                continue
            if detail.get("reason") in AUTH_REASONS:
                info.auth = True
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                info.retry_after = _duration(detail.get("retryDelay"))
        return info


def _parts(content: Any, index: int) -> list[dict[str, Any]]:
    """Gemini parts for an OpenAI message content (a string or a list of parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part.get("image_url"), index))
        else:
            raise InvalidRequest(f"messages[{index}] has a '{kind}' part; Gemini takes text and image_url parts.",
                                 param=f"messages[{index}].content")
    return parts


def _image_part(image_url: Any, index: int) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise InvalidRequest(f"messages[{index}] has an image_url part without a url.", param=f"messages[{index}]")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime_type = header[5:].split(";")[0] or "image/jpeg"
        if ";base64" not in header or not data:
            raise InvalidRequest(f"messages[{index}]: an image data URL must be base64.", param=f"messages[{index}]")
        return {"inline_data": {"mime_type": mime_type, "data": data}}
    if url.startswith(("http://", "https://")):
        mime_type = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
        return {"file_data": {"mime_type": mime_type, "file_uri": url}}
    raise InvalidRequest(f"messages[{index}]: an image URL must be a data: or http(s) URL.", param=f"messages[{index}]")


def _generation_config(params: GenerationParams) -> dict[str, Any]:
    config: dict[str, Any] = {"temperature": params.temperature, "topP": params.top_p, "candidateCount": 1}
    if params.max_tokens is not None:
        config["maxOutputTokens"] = params.max_tokens
    if params.stop:
        if len(params.stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"Gemini takes at most {MAX_STOP_SEQUENCES} stop sequences.", param="stop")
        config["stopSequences"] = list(params.stop)
    if params.seed is not None:
        config["seed"] = params.seed
    return config


def _usage(reply: dict[str, Any]) -> tuple[int, int]:
    usage = reply.get("usageMetadata")
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("promptTokenCount") or 0), int(usage.get("candidatesTokenCount") or 0)


def _duration(value: Any) -> float | None:
    """Seconds from a protobuf Duration in JSON ("13s", "1.5s")."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return max(0.0, float(value[:-1]))
    except ValueError:
        return None
