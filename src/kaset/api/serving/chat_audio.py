"""Audio in chat: input_audio parts heard, spoken replies (modalities: ["audio"]) and their ids."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.audio.resampler
import numpy as np
from fastapi import Request

from kaset.api.deps import check_model_allowed, get_speech, get_spoken_replies
from kaset.api.schemas.chat import ChatCompletionAudio, ChatCompletionRequest, ContentPart
from kaset.api.uploads import image_from_base64
from kaset.config import Settings
from kaset.errors import InvalidRequest, ModelUnavailable, NotFound, PayloadTooLarge, UnsupportedMediaType
from kaset.ids import new_id
from kaset.language import has_thai, written_language
from kaset.media.audio import SUPPORTED_INPUT_FORMATS, decode_audio
from kaset.pipelines.advice import Language
from kaset.pipelines.speech import SpeechService
from kaset.store.spoken_replies import SpokenReplies
from kaset.usage import record as record_usage

# --- audio parts and spoken replies ---------------------------------------------------------------
#
# As OpenAI's audio models and speaches do: a user message's `input_audio` parts are heard
# (transcribed) and their transcripts stand in for them, so any chat model can answer speech;
# with `modalities: ["text", "audio"]` the reply is also spoken. A spoken reply's id is kept
# with its transcript for an hour, so a client may send the assistant turn back as
# `{"role": "assistant", "audio": {"id": ...}}` the way OpenAI's clients do.
#
# The speech service and the spoken replies are looked up only for a request that has audio
# (`await get_speech(request)`): a text chat does not pay for their dependencies.

AUDIO_TTL_S = 3600
# OpenAI's pcm16 is 24 kHz mono s16le whatever the voice's own rate.
PCM16_RATE = 24_000
# OpenAI's voice names: with no speech_model they mean "the default voice for the language".
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                           "verse", "marin", "cedar"})


def _audio_parts(body: ChatCompletionRequest) -> list[tuple[int, int, ContentPart]]:
    return [(i, j, part) for i, message in enumerate(body.messages) if isinstance(message.content, list)
            for j, part in enumerate(message.content) if part.type == "input_audio"]


def _default_transcriber(body: ChatCompletionRequest, speech: SpeechService) -> str:
    """A model that understands the conversation's language: Thai text around → a Thai-capable
    one; otherwise a multilingual one (it detects the language), else English-only."""
    texts = " ".join(p.text or "" for m in body.messages if isinstance(m.content, list) for p in m.content) + \
        " ".join(m.content for m in body.messages if isinstance(m.content, str))
    if has_thai(texts):
        return speech.transcriber_for("th")
    try:
        return speech.transcriber_for(None)
    except ModelUnavailable:
        return speech.transcriber_for("en")


async def hear_audio_parts(body: ChatCompletionRequest, request: Request, settings: Settings,
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
    speech = await get_speech(request)
    model = body.transcription_model or _default_transcriber(body, speech)
    check_model_allowed(request, model)
    texts = await asyncio.gather(*(_hear_part(i, j, part, model, settings, speech, caller) for i, j, part in parts))
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


async def _hear_part(i: int, j: int, part: ContentPart, model: str, settings: Settings, speech: SpeechService,
                     caller: Callable[[], str | None]) -> str:
    where = f"messages[{i}].content[{j}]"
    data, _fmt = _audio_of(part, where)
    audio = image_from_base64(data, param=f"{where}.input_audio.data")
    if len(audio) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The audio in {where} is larger than this server's limit of "
                              f"{settings.max_upload_bytes} bytes.", param=where)
    try:
        # The container is sniffed from the bytes, so a part labelled wav that holds mp3 still works.
        samples, seconds = await asyncio.to_thread(decode_audio, audio, speech.max_audio_seconds)
        heard = await speech.hear_samples(samples, model=model, caller=caller)
    except (InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType, ModelUnavailable) as exc:
        if exc.param == "model":  # the transcription model cannot serve: say which field named it
            raise type(exc)(f"transcription_model: {exc.message}", param="transcription_model",
                            code=exc.code) from None
        if isinstance(exc, ModelUnavailable):
            raise
        raise type(exc)(f"{where} (input_audio): {exc.message}", param=where, code=exc.code) from None
    record_usage(audio_seconds=seconds)
    return heard.text


async def recall_spoken_replies(body: ChatCompletionRequest, request: Request) -> None:
    """Assistant turns sent back as `{"audio": {"id": ...}}` get their transcript as content."""
    spoken: SpokenReplies | None = None
    for index, message in enumerate(body.messages):
        audio = (message.model_extra or {}).get("audio")
        if message.role != "assistant" or not isinstance(audio, dict) or message.content:
            continue
        spoken = spoken or await get_spoken_replies(request)
        transcript = await spoken.recall(str(audio.get("id", "")))
        if transcript is None:
            raise InvalidRequest(
                f"messages[{index}].audio.id '{audio.get('id')}' is unknown or expired (a spoken reply is "
                f"remembered for {AUDIO_TTL_S // 60} minutes by the server that made it). Send the reply's "
                "transcript as the message's content instead.", param=f"messages[{index}].audio",
                code="audio_not_found")
        message.content = transcript


@dataclass
class ReplyVoice:
    """How to speak one reply: model, voice, format, and its OpenAI ids."""

    speech: SpeechService
    spoken_replies: SpokenReplies
    model: str | None
    voice: str | None
    fmt: str
    caller: Callable[[], str | None]
    audio_id: str
    expires_at: int
    language: Language = "en"

    def check(self) -> None:
        """NoVoice (503, code no_voice) when nothing speaks `language`."""
        self.speech.require_voice(self.language, self.model)

    async def speak(self, text: str) -> bytes:
        """`text` spoken in the reply's format; its seconds are counted."""
        fmt = "pcm" if self.fmt == "pcm16" else self.fmt
        spoken = await self.speech.speak(text, language=self.language, model=self.model, voice=self.voice, fmt=fmt,
                                         caller=self.caller)
        record_usage(audio_seconds=spoken.seconds)
        if self.fmt == "pcm16":
            return await asyncio.to_thread(_resample_s16, spoken.audio, spoken.sample_rate, PCM16_RATE)
        return spoken.audio

    async def whole(self, text: str) -> ChatCompletionAudio:
        self.language = written_language(text) if text.strip() else self.language
        self.check()
        data = await self.speak(text) if text.strip() else b""
        await self.spoken_replies.remember(self.audio_id, text, self.expires_at)
        return ChatCompletionAudio(id=self.audio_id, data=base64.b64encode(data).decode("ascii"),
                                   expires_at=self.expires_at, transcript=text)


async def voice_for(body: ChatCompletionRequest, request: Request,
                    caller: Callable[[], str | None]) -> ReplyVoice | None:
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
    return ReplyVoice(speech=await get_speech(request), spoken_replies=await get_spoken_replies(request),
                      model=body.speech_model, voice=voice, fmt=body.audio.format, caller=caller,
                      audio_id=f"audio_{new_id()}", expires_at=int(time.time()) + AUDIO_TTL_S)


def _resample_s16(pcm: bytes, rate: int, target: int) -> bytes:
    if rate == target or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    # One filter-graph thread (kaset.media.audio says why).
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=target, threads=1)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in out)
