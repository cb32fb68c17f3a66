"""POST /v1/chat/completions and /v1/completions (plain and SSE streaming)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
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
    ContentPart,
    Usage,
)
from kaset.api.streaming import primed
from kaset.api.uploads import image_from_base64
from kaset.errors import InvalidRequest, KasetError, PayloadTooLarge
from kaset.ids import new_id
from kaset.media.image import decode_image
from kaset.pipelines.advice import Language
from kaset.pipelines.describe import Description, encode_jpeg
from kaset.registry.manager import LoadedModel
from kaset.registry.routing import caller_key
from kaset.runtimes.base import ChatModel, Generation, GenerationChunk, GenerationParams
from kaset.runtimes.provider import VisionChat, jpeg_data_url
from kaset.usage import record as record_usage

router = APIRouter(tags=["chat"], dependencies=[Depends(require_json)])

MODEL_HEADER = "x-kaset-model"


def _deterministic(params: GenerationParams) -> bool:
    """Whether a retry gives the answer the first attempt would have (temperature 0 or a seed):
    only such non-streamed calls count as idempotent, so only they get a route's retries."""
    return params.temperature == 0 or params.seed is not None


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
            if chunk.finish_reason is not None:
                usage = _usage(chunk.prompt_tokens, chunk.completion_tokens)  # also records the tokens
                if include_usage:
                    yield _sse({**make_payload.base, "choices": [], "usage": usage.model_dump()})
    except KasetError as exc:
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
    # Every reply's token counts pass here exactly once: count them for the request log and metrics.
    record_usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


async def _sse_response(model: LoadedModel, make_chunks: Callable[[], Iterator[GenerationChunk]],
                        payloads: _ChatChunks | _CompletionChunks, include_usage: bool,
                        headers: dict[str, str]) -> StreamingResponse:
    # Waits for the first chunk: until then a route may still fall back to another model.
    chunks = await primed(model.stream(make_chunks))
    return StreamingResponse(_stream_sse(chunks, payloads, include_usage), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, svc: Services = Depends(services)
) -> Response:
    """The JSON's `model` is the name the client asked for (OpenAI clients expect it back); the
    x-kaset-model header names the model that served (a route's target or fallback)."""
    params = GenerationParams(
        max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, stop=_stops(body.stop), seed=body.seed,
    )
    completion_id = f"chatcmpl-{new_id()}"
    created = int(time.time())

    def caller() -> str | None:
        return caller_key(request)

    images = _image_urls(body)
    if images:
        record_usage(images=len(images))
        reply = _ChatReply(body, completion_id, created)

        async def with_images(model: LoadedModel) -> Response:
            if isinstance(model.runtime, VisionChat) and model.runtime.vision:
                return await _chat_with_vision_model(body, model, params, reply, svc)
            return await _chat_about_images(body, images, reply, svc)

        answered, _ = await svc.router.call(body.model, "chat", with_images, caller=caller)
        return answered
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _ChatChunks(completion_id, created, body.model)

        async def stream(model: LoadedModel) -> StreamingResponse:
            runtime = model.as_(ChatModel)
            messages = _to_messages(body, svc.settings.max_text_chars)
            return await _sse_response(model, lambda: runtime.chat_stream(messages, params), chunks, include_usage,
                                       svc.router.headers(body.model, model.spec))

        streamed, _ = await svc.router.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: LoadedModel) -> Generation:
        messages = _to_messages(body, svc.settings.max_text_chars)
        return await model.run(model.as_(ChatModel).chat, messages, params)

    result, spec = await svc.router.call(body.model, "chat", run, caller=caller, retry=_deterministic(params))
    completion = ChatCompletion(
        id=completion_id, created=created, model=body.model,
        choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(completion, headers=svc.router.headers(body.model, spec))


# --- image parts -------------------------------------------------------------------------------
#
# A vision-capable provider model gets the parts as they are (data URLs re-encoded from the
# decoded photo, so EXIF rotation, CMYK and huge photos are dealt with here; http(s) URLs
# passed through for the provider to fetch). Any other model cannot see: the photo goes
# through the describe service (a configured vision model, else the classifier's labels) and
# its description, saying how it was made, is the answer.

MAX_DESCRIBED_IMAGES = 4
_THAI = re.compile(r"[\u0E00-\u0E7F]")


def _part_url(part: ContentPart, index: int) -> str:
    value = (part.model_extra or {}).get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"messages[{index}] has an image_url part without a url.",
                             param=f"messages[{index}].content")
    return url


def _image_urls(body: ChatCompletionRequest) -> list[tuple[int, str]]:
    """(message index, url) of every image_url part, in order."""
    found: list[tuple[int, str]] = []
    for index, message in enumerate(body.messages):
        if isinstance(message.content, list):
            found.extend((index, _part_url(p, index)) for p in message.content if p.type == "image_url")
    return found


def _refuse_remote(url: str, index: int) -> None:
    if not url.startswith("data:"):
        raise InvalidRequest(
            f"messages[{index}]: this server has no internet access, so it cannot fetch image URLs. Send the "
            "image inline as a data URL (data:image/jpeg;base64,...).", param=f"messages[{index}].content",
            code="remote_image_unsupported")


async def _decode_data_url(url: str, index: int, svc: Services) -> np.ndarray:
    _refuse_remote(url, index)
    data = image_from_base64(url, param=f"messages[{index}].content")
    if len(data) > svc.settings.max_upload_bytes:
        raise PayloadTooLarge(f"An image in messages[{index}] is larger than this server's limit of "
                              f"{svc.settings.max_upload_bytes} bytes.", param=f"messages[{index}].content")
    return await asyncio.to_thread(decode_image, data, max_pixels=svc.settings.max_image_pixels)


async def _vision_part(part: ContentPart, index: int, svc: Services) -> dict[str, Any]:
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    if part.type != "image_url":
        raise InvalidRequest(f"messages[{index}] has a '{part.type}' part; this model takes text and image_url parts.",
                             param=f"messages[{index}].content")
    url = _part_url(part, index)
    if url.startswith(("http://", "https://")):
        return {"type": "image_url", "image_url": {"url": url}}  # the provider fetches it
    image = await _decode_data_url(url, index, svc)
    return {"type": "image_url", "image_url": {"url": jpeg_data_url(await asyncio.to_thread(encode_jpeg, image))}}


async def _vision_messages(body: ChatCompletionRequest, svc: Services) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    chars = 0
    for index, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if not isinstance(message.content, list):
            chars += len(message.content or "")
            messages.append({"role": role, "content": message.content or ""})
            continue
        parts = [await _vision_part(part, index, svc) for part in message.content]
        chars += sum(len(p.get("text", "")) for p in parts)
        messages.append({"role": role, "content": parts})
    if chars > svc.settings.max_text_chars:
        raise PayloadTooLarge(f"The messages hold {chars} characters; this server accepts at most "
                              f"{svc.settings.max_text_chars}.", param="messages")
    return messages


class _ChatReply:
    """The ids of one chat completion, and how to answer it plainly or as a stream."""

    def __init__(self, body: ChatCompletionRequest, completion_id: str, created: int) -> None:
        self.body = body
        self.completion_id = completion_id
        self.created = created

    def chunks(self) -> _ChatChunks:
        return _ChatChunks(self.completion_id, self.created, self.body.model)

    @property
    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def json(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
             headers: dict[str, str]) -> Response:
        response = ChatCompletion(
            id=self.completion_id, created=self.created, model=self.body.model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)],
            usage=_usage(prompt_tokens, completion_tokens),
        )
        return json_response(response, headers=headers)


async def _chat_with_vision_model(body: ChatCompletionRequest, model: LoadedModel, params: GenerationParams,
                                  reply: _ChatReply, svc: Services) -> Response:
    runtime = model.runtime
    assert isinstance(runtime, VisionChat)
    messages = await _vision_messages(body, svc)
    headers = svc.router.headers(body.model, model.spec)
    if body.stream:
        return await _sse_response(model, lambda: runtime.chat_multimodal_stream(messages, params), reply.chunks(),
                                   reply.include_usage, headers)
    result = await model.run(runtime.chat_multimodal, messages, params)
    return reply.json(result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens,
                      headers=headers)


def _described_text(descriptions: list[Description]) -> str:
    """The assistant's answer: the description(s), then how they were made (label-based or not)."""
    if len(descriptions) == 1:
        texts = descriptions[0].text
    else:
        texts = "\n".join(f"Image {n}: {d.text}" for n, d in enumerate(descriptions, start=1))
    notes = "\n".join(f"({note})" for note in dict.fromkeys(d.note for d in descriptions))
    return f"{texts}\n\n{notes}"


def _question(body: ChatCompletionRequest, images: list[tuple[int, str]]) -> tuple[int, str]:
    """(index, text) of the message whose images are described: the latest user message that
    carries images (earlier ones are history, which a description cannot use)."""
    user_indices = [i for i, _ in images if body.messages[i].role == "user"]
    target = user_indices[-1] if user_indices else images[-1][0]
    content = body.messages[target].content
    parts = content if isinstance(content, list) else []
    return target, " ".join(p.text or "" for p in parts if p.type == "text").strip()


async def _chat_about_images(body: ChatCompletionRequest, images: list[tuple[int, str]], reply: _ChatReply,
                             svc: Services) -> Response:
    for index, url in images:
        _refuse_remote(url, index)
    target, prompt = _question(body, images)
    language: Language = "th" if _THAI.search(prompt) else "en"
    urls = [url for i, url in images if i == target][:MAX_DESCRIBED_IMAGES]
    descriptions = []
    for url in urls:
        image = await _decode_data_url(url, target, svc)
        descriptions.append(await svc.describer.describe(image, language=language, prompt=prompt or None))
    text = _described_text(descriptions)
    prompt_tokens = sum(d.prompt_tokens for d in descriptions)
    completion_tokens = sum(d.completion_tokens for d in descriptions)
    used = dict.fromkeys(m for d in descriptions for m in d.models_used)
    headers = {MODEL_HEADER: ",".join(used) or "none", "x-kaset-describe-method": descriptions[0].method}
    if not body.stream:
        return reply.json(text, "stop", prompt_tokens, completion_tokens, headers=headers)

    async def one_piece() -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text=text)
        yield GenerationChunk(text="", finish_reason="stop", prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)

    return StreamingResponse(_stream_sse(one_piece(), reply.chunks(), reply.include_usage),
                             media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, svc: Services = Depends(services)) -> Response:
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

    def caller() -> str | None:
        return caller_key(request)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _CompletionChunks(completion_id, created, body.model)

        async def stream(model: LoadedModel) -> StreamingResponse:
            runtime = model.as_(ChatModel)
            return await _sse_response(model, lambda: runtime.complete_stream(prompt, params), chunks, include_usage,
                                       svc.router.headers(body.model, model.spec))

        streamed, _ = await svc.router.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: LoadedModel) -> Generation:
        return await model.run(model.as_(ChatModel).complete, prompt, params)

    result, spec = await svc.router.call(body.model, "chat", run, caller=caller, retry=_deterministic(params))
    text = prompt + result.text if body.echo else result.text
    response = Completion(
        id=completion_id, created=created, model=body.model,
        choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(response, headers=svc.router.headers(body.model, spec))
