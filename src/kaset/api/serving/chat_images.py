"""Images in chat: a vision model gets them as parts; any other model answers with their description."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi.responses import Response, StreamingResponse

from kaset.api.schemas.chat import ChatCompletionRequest, ContentPart
from kaset.api.serving.chat_stream import ChatReply, sse_response, stream_sse
from kaset.api.uploads import image_from_base64
from kaset.config import Settings
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.language import has_thai
from kaset.media.image import decode_image
from kaset.pipelines.advice import Language
from kaset.pipelines.describe import DescribeService, Description, encode_jpeg
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import MODEL_HEADER, Router
from kaset.runtimes.base import GenerationChunk, GenerationParams
from kaset.runtimes.provider import jpeg_data_url

# --- image parts -------------------------------------------------------------------------------
#
# A vision-capable provider model gets the parts as they are (data URLs re-encoded from the
# decoded photo, so EXIF rotation, CMYK and huge photos are dealt with here; http(s) URLs
# passed through for the provider to fetch). Any other model cannot see: the photo goes
# through the describe service (a configured vision model, else the classifier's labels) and
# its description, saying how it was made, is the answer.

MAX_DESCRIBED_IMAGES = 4


def _part_url(part: ContentPart, index: int) -> str:
    value = (part.model_extra or {}).get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"messages[{index}] has an image_url part without a url.",
                             param=f"messages[{index}].content")
    return url


def image_urls(body: ChatCompletionRequest) -> list[tuple[int, str]]:
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


async def _decode_data_url(url: str, index: int, settings: Settings) -> np.ndarray:
    _refuse_remote(url, index)
    data = image_from_base64(url, param=f"messages[{index}].content")
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"An image in messages[{index}] is larger than this server's limit of "
                              f"{settings.max_upload_bytes} bytes.", param=f"messages[{index}].content")
    return await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)


async def _vision_part(part: ContentPart, index: int, settings: Settings) -> dict[str, Any]:
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    if part.type != "image_url":
        raise InvalidRequest(f"messages[{index}] has a '{part.type}' part; this model takes text and image_url parts.",
                             param=f"messages[{index}].content")
    url = _part_url(part, index)
    if url.startswith(("http://", "https://")):
        return {"type": "image_url", "image_url": {"url": url}}  # the provider fetches it
    image = await _decode_data_url(url, index, settings)
    return {"type": "image_url", "image_url": {"url": jpeg_data_url(await asyncio.to_thread(encode_jpeg, image))}}


async def _vision_messages(body: ChatCompletionRequest, settings: Settings) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    chars = 0
    for index, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if not isinstance(message.content, list):
            chars += len(message.content or "")
            messages.append({"role": role, "content": message.content or ""})
            continue
        parts = [await _vision_part(part, index, settings) for part in message.content]
        chars += sum(len(p.get("text", "")) for p in parts)
        messages.append({"role": role, "content": parts})
    if chars > settings.max_text_chars:
        raise PayloadTooLarge(f"The messages hold {chars} characters; this server accepts at most "
                              f"{settings.max_text_chars}.", param="messages")
    return messages


async def chat_with_vision_model(body: ChatCompletionRequest, model: ModelHandle, params: GenerationParams,
                                  reply: ChatReply, settings: Settings, router: Router) -> Response:
    messages = await _vision_messages(body, settings)
    headers = router.headers(body.model, model.spec)
    if body.stream:
        return await sse_response(model.chat_parts_stream(messages, params), reply.chunks(), reply.include_usage,
                                  headers, reply.voice)
    return await reply.respond_all([await model.chat_parts(messages, params)], headers=headers)


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


async def chat_about_images(body: ChatCompletionRequest, images: list[tuple[int, str]], reply: ChatReply,
                             settings: Settings, describer: DescribeService) -> Response:
    for index, url in images:
        _refuse_remote(url, index)
    target, prompt = _question(body, images)
    language: Language = "th" if has_thai(prompt) else "en"
    urls = [url for i, url in images if i == target][:MAX_DESCRIBED_IMAGES]
    descriptions = []
    for url in urls:
        image = await _decode_data_url(url, target, settings)
        descriptions.append(await describer.describe(image, language=language, prompt=prompt or None))
    text = _described_text(descriptions)
    prompt_tokens = sum(d.prompt_tokens for d in descriptions)
    completion_tokens = sum(d.completion_tokens for d in descriptions)
    used = dict.fromkeys(m for d in descriptions for m in d.models_used)
    headers = {MODEL_HEADER: ",".join(used) or "none", "x-kaset-describe-method": descriptions[0].method}
    if not body.stream:
        return await reply.respond(text, "stop", prompt_tokens, completion_tokens, headers=headers)

    async def one_piece() -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text=text)
        yield GenerationChunk(text="", finish_reason="stop", prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)

    return StreamingResponse(stream_sse(one_piece(), reply.chunks(), reply.include_usage, reply.voice),
                             media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
