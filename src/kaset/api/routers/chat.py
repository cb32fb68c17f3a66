"""POST /v1/chat/completions and /v1/completions (plain and SSE streaming)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import av.audio.resampler
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from kaset.api.deps import Services, check_model_allowed, require_json, services
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionAudio,
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
from kaset.errors import (
    InvalidRequest,
    KasetError,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from kaset.ids import new_id
from kaset.media.audio import SUPPORTED_INPUT_FORMATS, decode_audio
from kaset.media.image import decode_image
from kaset.pipelines.advice import Language
from kaset.pipelines.describe import Description, encode_jpeg
from kaset.pipelines.speech import split_sentences
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import caller_key
from kaset.runtimes.base import Generation, GenerationChunk, GenerationParams
from kaset.runtimes.provider import jpeg_data_url
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
    chunks: AsyncIterator[GenerationChunk], make_payload: Any, include_usage: bool, voice: _Voice | None = None,
) -> AsyncIterator[bytes]:
    try:
        if voice is not None:
            async for payload in _spoken_stream(chunks, make_payload, include_usage, voice):
                yield _sse(payload)
        else:
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
    def __init__(self, completion_id: str, created: int, model: str, audio_id: str | None = None) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.first = True
        # Set when the reply is spoken: its text then streams as `delta.audio.transcript`, as OpenAI's does.
        self.audio_id = audio_id

    def __call__(self, chunk: GenerationChunk) -> Iterator[dict[str, Any]]:
        yield from self.text(chunk.text)
        if chunk.finish_reason is not None:
            yield self.finish(chunk.finish_reason)

    def text(self, text: str) -> Iterator[dict[str, Any]]:
        if self.first:
            self.first = False
            yield self._delta({"role": "assistant", "content": None if self.audio_id else ""})
        if text:
            yield self._delta({"content": None, "audio": {"id": self.audio_id, "transcript": text}}
                              if self.audio_id else {"content": text})

    def audio(self, data: bytes, expires_at: int) -> dict[str, Any]:
        return self._delta({"audio": {"id": self.audio_id, "data": base64.b64encode(data).decode("ascii"),
                                      "expires_at": expires_at}})

    def finish(self, reason: str) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


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


async def _sse_of(generated: AsyncIterator[GenerationChunk], payloads: _ChatChunks | _CompletionChunks,
                  include_usage: bool, headers: dict[str, str], voice: _Voice | None = None) -> StreamingResponse:
    # Waits for the first chunk: until then a route may still fall back to another model.
    chunks = await primed(generated)
    return StreamingResponse(_stream_sse(chunks, payloads, include_usage, voice), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


@policy(budgets=("tokens_per_day", "images_per_day"), model_field=True)
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

    voice = _voice_for(body, request, svc, caller)
    await _hear_audio_parts(body, request, svc, caller)
    await _recall_spoken_replies(body, svc)
    if voice is not None:
        # Fail before generating when nothing can speak the language the reply will likely be in.
        voice.language = _language_of(_last_user_text(body))
        voice.check()
    reply = _ChatReply(body, completion_id, created, voice)
    images = _image_urls(body)
    if images:
        record_usage(images=len(images))

        async def with_images(model: ModelHandle) -> Response:
            if (await model.info()).vision:
                return await _chat_with_vision_model(body, model, params, reply, svc)
            return await _chat_about_images(body, images, reply, svc)

        answered, _ = await svc.router.call(body.model, "chat", with_images, caller=caller)
        return answered
    if body.stream:
        async def stream(model: ModelHandle) -> StreamingResponse:
            messages = _to_messages(body, svc.settings.max_text_chars)
            return await _sse_of(model.chat_stream(messages, params), reply.chunks(), reply.include_usage,
                                 svc.router.headers(body.model, model.spec), voice)

        streamed, _ = await svc.router.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> Generation:
        return await model.chat(_to_messages(body, svc.settings.max_text_chars), params)

    result, spec = await svc.router.call(body.model, "chat", run, caller=caller, retry=_deterministic(params))
    return await reply.respond(result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens,
                               headers=svc.router.headers(body.model, spec))


# --- audio parts and spoken replies ---------------------------------------------------------------
#
# As OpenAI's audio models and speaches do: a user message's `input_audio` parts are heard
# (transcribed) and their transcripts stand in for them, so any chat model can answer speech;
# with `modalities: ["text", "audio"]` the reply is also spoken. A spoken reply's id is kept
# with its transcript for an hour, so a client may send the assistant turn back as
# `{"role": "assistant", "audio": {"id": ...}}` the way OpenAI's clients do.

AUDIO_TTL_S = 3600
# OpenAI's pcm16 is 24 kHz mono s16le whatever the voice's own rate.
PCM16_RATE = 24_000
# OpenAI's voice names: with no speech_model they mean "the default voice for the language".
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                           "verse", "marin", "cedar"})


def _language_of(text: str) -> Language:
    letters = [c for c in text if c.isalpha()]
    thai = sum(1 for c in letters if _THAI.match(c))
    return "th" if letters and thai / len(letters) >= 0.3 else "en"


def _last_user_text(body: ChatCompletionRequest) -> str:
    for index in range(len(body.messages) - 1, -1, -1):
        if body.messages[index].role == "user":
            return _message_text(body.messages[index], index) if not _has_images(body.messages[index]) else \
                " ".join(p.text or "" for p in body.messages[index].content or [] if not isinstance(p, str)
                         and p.type == "text")
    return ""


def _has_images(message: ChatMessage) -> bool:
    return isinstance(message.content, list) and any(p.type == "image_url" for p in message.content)


def _audio_parts(body: ChatCompletionRequest) -> list[tuple[int, int, ContentPart]]:
    return [(i, j, part) for i, message in enumerate(body.messages) if isinstance(message.content, list)
            for j, part in enumerate(message.content) if part.type == "input_audio"]


def _default_transcriber(body: ChatCompletionRequest, svc: Services) -> str:
    """A model that understands the conversation's language: Thai text around → a Thai-capable
    one; otherwise a multilingual one (it detects the language), else English-only."""
    texts = " ".join(p.text or "" for m in body.messages if isinstance(m.content, list) for p in m.content) + \
        " ".join(m.content for m in body.messages if isinstance(m.content, str))
    if _THAI.search(texts):
        return svc.speech.transcriber_for("th")
    try:
        return svc.speech.transcriber_for(None)
    except ModelUnavailable:
        return svc.speech.transcriber_for("en")


async def _hear_audio_parts(body: ChatCompletionRequest, request: Request, svc: Services,
                            caller: Callable[[], str | None]) -> None:
    """Replace every input_audio part with a text part holding its transcript; all parts are
    heard at once."""
    parts = _audio_parts(body)
    if not parts:
        return
    for i, j, _ in parts:
        if body.messages[i].role != "user":
            raise InvalidRequest(f"messages[{i}].content[{j}]: input_audio parts belong in user messages.",
                                 param=f"messages[{i}].content[{j}]")
    model = body.transcription_model or _default_transcriber(body, svc)
    check_model_allowed(request, model)
    texts = await asyncio.gather(*(_hear_part(i, j, part, model, svc, caller) for i, j, part in parts))
    for (i, j, _), text in zip(parts, texts, strict=True):
        content = body.messages[i].content
        assert isinstance(content, list)
        content[j] = ContentPart(type="text", text=text)


def _audio_of(part: ContentPart, where: str) -> tuple[str, str]:
    value = (part.model_extra or {}).get("input_audio")
    if not isinstance(value, dict) or not isinstance(value.get("data"), str) or not value["data"]:
        raise InvalidRequest(f"{where} is an input_audio part without input_audio.data (the audio, base64).",
                             param=where)
    fmt = str(value.get("format") or "").lower()
    if fmt not in SUPPORTED_INPUT_FORMATS:
        raise InvalidRequest(f"{where}: input_audio.format '{fmt}' is not supported. Supported formats: "
                             f"{', '.join(SUPPORTED_INPUT_FORMATS)}.", param=f"{where}.input_audio.format",
                             code="unsupported_audio_format")
    return value["data"], fmt


async def _hear_part(i: int, j: int, part: ContentPart, model: str, svc: Services,
                     caller: Callable[[], str | None]) -> str:
    where = f"messages[{i}].content[{j}]"
    data, _fmt = _audio_of(part, where)
    audio = image_from_base64(data, param=f"{where}.input_audio.data")
    if len(audio) > svc.settings.max_upload_bytes:
        raise PayloadTooLarge(f"The audio in {where} is larger than this server's limit of "
                              f"{svc.settings.max_upload_bytes} bytes.", param=where)
    try:
        # The container is sniffed from the bytes, so a part labelled wav that holds mp3 still works.
        samples, seconds = await asyncio.to_thread(decode_audio, audio, svc.speech.max_audio_seconds)
        heard = await svc.speech.hear_samples(samples, model=model, caller=caller)
    except (InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, ModelUnavailable) as exc:
        if exc.param == "model":  # the transcription model cannot serve: say which field named it
            raise type(exc)(f"transcription_model: {exc.message}", param="transcription_model",
                            code=exc.code) from None
        if isinstance(exc, ModelUnavailable):
            raise
        raise type(exc)(f"{where} (input_audio): {exc.message}", param=where, code=exc.code) from None
    record_usage(audio_seconds=seconds)
    return heard.text


async def _recall_spoken_replies(body: ChatCompletionRequest, svc: Services) -> None:
    """Assistant turns sent back as `{"audio": {"id": ...}}` get their transcript as content."""
    for index, message in enumerate(body.messages):
        audio = (message.model_extra or {}).get("audio")
        if message.role != "assistant" or not isinstance(audio, dict) or message.content:
            continue
        transcript = await svc.spoken_replies.recall(str(audio.get("id", "")))
        if transcript is None:
            raise InvalidRequest(
                f"messages[{index}].audio.id '{audio.get('id')}' is unknown or expired (a spoken reply is "
                f"remembered for {AUDIO_TTL_S // 60} minutes by the server that made it). Send the reply's "
                "transcript as the message's content instead.", param=f"messages[{index}].audio",
                code="audio_not_found")
        message.content = transcript


@dataclass
class _Voice:
    """How to speak one reply: model, voice, format, and its OpenAI ids."""

    svc: Services
    model: str | None
    voice: str | None
    fmt: str
    caller: Callable[[], str | None]
    audio_id: str
    expires_at: int
    language: Language = "en"

    def check(self) -> None:
        """NoVoice (503, code no_voice) when nothing speaks `language`."""
        self.svc.speech.require_voice(self.language, self.model)

    async def speak(self, text: str) -> bytes:
        """`text` spoken in the reply's format; its seconds are counted."""
        fmt = "pcm" if self.fmt == "pcm16" else self.fmt
        spoken = await self.svc.speech.speak(text, language=self.language, model=self.model, voice=self.voice,
                                             fmt=fmt, caller=self.caller)
        record_usage(audio_seconds=spoken.seconds)
        if self.fmt == "pcm16":
            return await asyncio.to_thread(_resample_s16, spoken.audio, spoken.sample_rate, PCM16_RATE)
        return spoken.audio

    async def whole(self, text: str) -> ChatCompletionAudio:
        self.language = _language_of(text) if text.strip() else self.language
        self.check()
        data = await self.speak(text) if text.strip() else b""
        await self.svc.spoken_replies.remember(self.audio_id, text, self.expires_at)
        return ChatCompletionAudio(id=self.audio_id, data=base64.b64encode(data).decode("ascii"),
                                   expires_at=self.expires_at, transcript=text)


def _voice_for(body: ChatCompletionRequest, request: Request, svc: Services,
               caller: Callable[[], str | None]) -> _Voice | None:
    if not body.modalities or "audio" not in body.modalities:
        return None
    if body.audio is None:
        raise InvalidRequest("modalities includes 'audio': send 'audio': {\"voice\": \"alloy\", \"format\": \"wav\"} "
                             "to say how to speak the reply.", param="audio")
    if body.stream and body.audio.format != "pcm16":
        raise InvalidRequest(f"audio.format '{body.audio.format}' cannot be streamed: a streamed spoken reply is "
                             "pcm16 (24 kHz 16-bit mono), as with OpenAI.", param="audio.format")
    if body.speech_model:
        check_model_allowed(request, body.speech_model)
    voice: str | None = body.audio.voice
    if body.speech_model is None and body.audio.voice.lower() in OPENAI_VOICES:
        voice = None  # the language's default voice of whichever model speaks it
    return _Voice(svc=svc, model=body.speech_model, voice=voice, fmt=body.audio.format, caller=caller,
                  audio_id=f"audio_{new_id()}", expires_at=int(time.time()) + AUDIO_TTL_S)


def _resample_s16(pcm: bytes, rate: int, target: int) -> bytes:
    if rate == target or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=target)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in out)


async def _spoken_stream(chunks: AsyncIterator[GenerationChunk], payloads: _ChatChunks, include_usage: bool,
                         voice: _Voice) -> AsyncIterator[dict[str, Any]]:
    """The reply's transcript deltas as they are generated and, as each sentence is complete,
    its pcm16 audio delta (spoken in a second task, so the text never waits for the voice);
    the finish and usage chunks come after the last audio."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    sentences: asyncio.Queue[str | None] = asyncio.Queue()
    final: list[GenerationChunk] = []
    said: list[str] = []

    async def read_text() -> None:
        buffer = ""
        try:
            async for chunk in chunks:
                for payload in payloads.text(chunk.text):
                    events.put_nowait(("payload", payload))
                said.append(chunk.text)
                buffer += chunk.text
                pieces = split_sentences(buffer)
                if len(pieces) > 1:
                    for sentence in pieces[:-1]:
                        sentences.put_nowait(sentence)
                    buffer = pieces[-1]
                if chunk.finish_reason is not None:
                    final.append(chunk)
            if buffer.strip():
                sentences.put_nowait(buffer.strip())
            events.put_nowait(("done", None))
        except Exception as exc:
            events.put_nowait(("error", exc))
        finally:
            sentences.put_nowait(None)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def speak() -> None:
        try:
            while (sentence := await sentences.get()) is not None:
                events.put_nowait(("payload", payloads.audio(await voice.speak(sentence), voice.expires_at)))
            events.put_nowait(("done", None))
        except Exception as exc:
            events.put_nowait(("error", exc))

    tasks = [asyncio.create_task(read_text()), asyncio.create_task(speak())]
    try:
        running = len(tasks)
        while running:
            kind, value = await events.get()
            if kind == "done":
                running -= 1
            elif kind == "error":
                raise value
            else:
                yield value
        await voice.svc.spoken_replies.remember(voice.audio_id, "".join(said), voice.expires_at)
        last = final[-1] if final else GenerationChunk(text="", finish_reason="stop")
        yield payloads.finish(last.finish_reason or "stop")
        usage = _usage(last.prompt_tokens, last.completion_tokens)
        if include_usage:
            yield {**payloads.base, "choices": [], "usage": usage.model_dump()}
    finally:
        for task in tasks:
            task.cancel()


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
    """The ids of one chat completion, and how to answer it plainly or as a stream, spoken or not."""

    def __init__(self, body: ChatCompletionRequest, completion_id: str, created: int,
                 voice: _Voice | None = None) -> None:
        self.body = body
        self.completion_id = completion_id
        self.created = created
        self.voice = voice

    def chunks(self) -> _ChatChunks:
        return _ChatChunks(self.completion_id, self.created, self.body.model,
                           self.voice.audio_id if self.voice else None)

    @property
    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    async def respond(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                      headers: dict[str, str]) -> Response:
        message = AssistantMessage(content=text)
        if self.voice is not None:
            # OpenAI's shape: the text is the audio's transcript, content is null.
            message = AssistantMessage(content=None, audio=await self.voice.whole(text))
        response = ChatCompletion(
            id=self.completion_id, created=self.created, model=self.body.model,
            choices=[ChatChoice(message=message, finish_reason=finish_reason)],
            usage=_usage(prompt_tokens, completion_tokens),
        )
        return json_response(response, headers=headers)


async def _chat_with_vision_model(body: ChatCompletionRequest, model: ModelHandle, params: GenerationParams,
                                  reply: _ChatReply, svc: Services) -> Response:
    messages = await _vision_messages(body, svc)
    headers = svc.router.headers(body.model, model.spec)
    if body.stream:
        return await _sse_of(model.chat_parts_stream(messages, params), reply.chunks(), reply.include_usage, headers,
                             reply.voice)
    result = await model.chat_parts(messages, params)
    return await reply.respond(result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens,
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
        return await reply.respond(text, "stop", prompt_tokens, completion_tokens, headers=headers)

    async def one_piece() -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text=text)
        yield GenerationChunk(text="", finish_reason="stop", prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens)

    return StreamingResponse(_stream_sse(one_piece(), reply.chunks(), reply.include_usage, reply.voice),
                             media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


@policy(budgets=("tokens_per_day",), model_field=True)
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

        async def stream(model: ModelHandle) -> StreamingResponse:
            return await _sse_of(model.complete_stream(prompt, params), chunks, include_usage,
                                 svc.router.headers(body.model, model.spec))

        streamed, _ = await svc.router.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> Generation:
        return await model.complete(prompt, params)

    result, spec = await svc.router.call(body.model, "chat", run, caller=caller, retry=_deterministic(params))
    text = prompt + result.text if body.echo else result.text
    response = Completion(
        id=completion_id, created=created, model=body.model,
        choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)],
        usage=_usage(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(response, headers=svc.router.headers(body.model, spec))
