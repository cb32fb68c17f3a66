"""POST /v1/chat/completions and /v1/completions (plain and SSE streaming)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse

from kaset.api.deps import Services, require_json, services
from kaset.api.responses import json_response
from kaset.api.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from kaset.api.streaming import primed
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.ids import new_id
from kaset.registry.manager import LoadedModel
from kaset.runtimes.base import ChatModel, GenerationChunk, GenerationParams

router = APIRouter(tags=["chat"], dependencies=[Depends(require_json)])

MODEL_HEADER = "x-kaset-model"


def _message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text":
            raise InvalidRequest(
                f"messages[{index}] has a '{part.type}' part; this model takes text parts only.",
                param=f"messages[{index}].content",
            )
        texts.append(part.text or "")
    return "\n".join(texts)


def _to_messages(request: ChatCompletionRequest, max_chars: int) -> list[dict[str, str]]:
    messages = []
    total = 0
    for index, message in enumerate(request.messages):
        text = _message_text(message, index)
        total += len(text)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    if total > max_chars:
        raise PayloadTooLarge(
            f"The messages hold {total} characters; this server accepts at most {max_chars}.",
            param="messages",
        )
    return messages


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise InvalidRequest("At most 4 stop sequences are allowed.", param="stop")
    return [s for s in stops if s]


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def _stream_sse(
    chunks: AsyncIterator[GenerationChunk], make_payload: Any, include_usage: bool
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            for payload in make_payload(chunk):
                yield _sse(payload)
            if chunk.finish_reason is not None and include_usage:
                usage = _usage(chunk.prompt_tokens, chunk.completion_tokens)
                yield _sse({**make_payload.base, "choices": [], "usage": usage.model_dump()})
    except InvalidRequest as exc:
        # Headers are gone already: report the error in-band, as OpenAI does.
        yield _sse(exc.envelope())
    yield b"data: [DONE]\n\n"


class _ChatChunks:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.first = True

    def __call__(self, chunk: GenerationChunk) -> Iterator[dict[str, Any]]:
        if self.first:
            self.first = False
            yield {**self.base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]}
        if chunk.text:
            yield {**self.base, "choices": [{"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}]}
        if chunk.finish_reason is not None:
            yield {**self.base, "choices": [{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}]}


class _CompletionChunks:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.base = {"id": completion_id, "object": "text_completion", "created": created, "model": model}

    def __call__(self, chunk: GenerationChunk) -> Iterator[dict[str, Any]]:
        if chunk.text or chunk.finish_reason is not None:
            yield {**self.base, "choices": [{"index": 0, "text": chunk.text, "finish_reason": chunk.finish_reason,
                                             "logprobs": None}]}


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


async def _sse_response(model: LoadedModel, make_chunks: Callable[[], Iterator[GenerationChunk]],
                        payloads: _ChatChunks | _CompletionChunks, include_usage: bool) -> StreamingResponse:
    chunks = await primed(model.stream(make_chunks))
    return StreamingResponse(_stream_sse(chunks, payloads, include_usage), media_type="text/event-stream",
                             headers={MODEL_HEADER: model.spec.id, "cache-control": "no-cache"})


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, svc: Services = Depends(services)
) -> Response:
    model = await svc.models.get(body.model, "chat")
    runtime = model.as_(ChatModel)
    messages = _to_messages(body, svc.settings.max_text_chars)
    params = GenerationParams(
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, stop=_stops(body.stop), seed=body.seed,
    )
    completion_id = f"chatcmpl-{new_id()}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _sse_response(model, lambda: runtime.chat_stream(messages, params),
                                   _ChatChunks(completion_id, created, body.model), include_usage)
    result = await model.run(runtime.chat, messages, params)
    response = ChatCompletion(
        id=completion_id, created=created, model=body.model,
        choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(response, headers={MODEL_HEADER: model.spec.id})


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, svc: Services = Depends(services)) -> Response:
    model = await svc.models.get(body.model, "chat")
    runtime = model.as_(ChatModel)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidRequest("Send one prompt per request.", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    if len(prompt) > svc.settings.max_text_chars:
        raise PayloadTooLarge(
            f"The prompt holds {len(prompt)} characters; this server accepts at most {svc.settings.max_text_chars}.",
            param="prompt",
        )
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                              stop=_stops(body.stop), seed=body.seed)
    completion_id = f"cmpl-{new_id()}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _sse_response(model, lambda: runtime.complete_stream(prompt, params),
                                   _CompletionChunks(completion_id, created, body.model), include_usage)
    result = await model.run(runtime.complete, prompt, params)
    text = prompt + result.text if body.echo else result.text
    response = Completion(
        id=completion_id, created=created, model=body.model,
        choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(response, headers={MODEL_HEADER: model.spec.id})
