"""OpenAI's audio API: /v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from kaset import usage
from kaset.api.deps import ModelsDep, RouterDep, SettingsDep, check_model_allowed, require_json, require_multipart
from kaset.api.policy import policy
from kaset.api.schemas.audio import (
    SpeechRequest,
    TranscriptionFormat,
    TranscriptionSegment,
    TranscriptionWord,
    VerboseTranscription,
    VoiceList,
    VoiceObject,
)
from kaset.api.streaming import encoded, primed
from kaset.api.uploads import read_upload
from kaset.auth.allowlist import allows
from kaset.auth.principal import Principal
from kaset.config import Settings
from kaset.errors import InvalidRequest
from kaset.media.audio import AUDIO_MEDIA_TYPES, encode_audio
from kaset.media.subtitles import to_srt, to_vtt
from kaset.pipelines.speech import transcribe_bytes
from kaset.registry.catalog import ModelSpec
from kaset.registry.handle import ModelHandle
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router, caller_key
from kaset.runtimes.base import TranscribeOptions, Transcription, Voice

router = APIRouter(tags=["audio"])




def _render(result: Transcription, fmt: TranscriptionFormat, task: Literal["transcribe", "translate"],
            headers: dict[str, str]) -> Response:
    if fmt == "text":
        return PlainTextResponse(result.text, headers=headers)
    if fmt == "srt":
        return PlainTextResponse(to_srt(result.segments), headers=headers)
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt", headers=headers)
    if fmt == "verbose_json":
        words = [TranscriptionWord(word=w.word, start=w.start, end=w.end, probability=w.probability)
                 for s in result.segments for w in (s.words or [])]
        verbose = VerboseTranscription(
            task=task, language=result.language, duration=result.duration, text=result.text,
            segments=[TranscriptionSegment(
                id=s.id, start=s.start, end=s.end, text=s.text, tokens=s.tokens, temperature=s.temperature,
                avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob,
            ) for s in result.segments],
            words=words or None,
        )
        return JSONResponse(verbose.model_dump(exclude_none=True), headers=headers)
    return JSONResponse({"text": result.text}, headers=headers)


async def _transcribe(routing: Router, settings: Settings, request: Request, file: UploadFile, model_name: str,
                      options: TranscribeOptions, fmt: TranscriptionFormat) -> Response:
    data = await read_upload(file, settings.max_upload_bytes)
    result, used, spec, seconds = await transcribe_bytes(routing, data, model_name, options,
                                                         settings.max_audio_seconds,
                                                         caller=lambda: caller_key(request))
    usage.record(audio_seconds=seconds)
    return _render(result, fmt, used.task, routing.headers(model_name, spec))


@policy(budgets=("audio_seconds_per_day",), model_field=True)
@router.post("/v1/audio/transcriptions", dependencies=[Depends(require_multipart)])
async def transcriptions(
    request: Request,
    routing: RouterDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="Audio: wav, mp3, flac, ogg, webm or m4a.")],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[TranscriptionFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
) -> Response:
    options = TranscribeOptions(
        language=language or None, prompt=prompt or None, temperature=temperature, task="transcribe",
        word_timestamps="word" in (timestamp_granularities or []),
    )
    return await _transcribe(routing, settings, request, file, model, options, response_format)


@policy(budgets=("audio_seconds_per_day",), model_field=True)
@router.post("/v1/audio/translations", dependencies=[Depends(require_multipart)])
async def translations(
    request: Request,
    routing: RouterDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="Audio: wav, mp3, flac, ogg, webm or m4a.")],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[TranscriptionFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
) -> Response:
    """Speech in any language the model knows, transcribed into English."""
    options = TranscribeOptions(prompt=prompt or None, temperature=temperature, task="translate")
    return await _transcribe(routing, settings, request, file, model, options, response_format)


@policy(model_field=True)
@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voices(request: Request, models: ModelsDep, routing: RouterDep, model: str | None = None,
                      language: str | None = None) -> VoiceList:
    """The voices of the installed speech models (loaded or not), or of `model`; `language`
    ("en", "en-us", "vi"...) keeps those that speak it. A key with an allowlist sees its models only."""
    if model is not None:
        check_model_allowed(request, model)
        specs = [models.resolve(model)]
    else:
        principal: Principal | None = getattr(request.state, "key", None)
        allowed = principal.allowed_models if principal is not None else None
        specs = [s for s in routing.models_for("synthesize")
                 if s.id != "echo" and (allowed is None or allows(allowed, s.id, models.catalog))]
    wanted = language.strip().lower().replace("_", "-") if language else None
    data: list[VoiceObject] = []
    for spec in specs:
        for position, voice in enumerate(await _voices(models, routing, spec)):
            tag = voice.language.lower()
            if wanted and not (tag == wanted or tag.split("-")[0] == wanted):
                continue
            data.append(VoiceObject(id=voice.id, model=spec.id, language=voice.language,
                                    name=voice.name or voice.id, default=position == 0))
    return VoiceList(data=data)


async def _voices(models: ModelManager, routing: Router, spec: ModelSpec) -> list[Voice]:
    """A speech model's voices: asked of the worker that serves it, else read here (without
    loading the model)."""
    if routing.remote is not None and routing.remote.serves(spec.key):
        return (await (await routing.handle(spec.key, "synthesize")).info()).voices
    return await models.voices(spec)


@policy(budgets=("audio_seconds_per_day",), model_field=True)
@router.post("/v1/audio/speech", dependencies=[Depends(require_json)],
             responses={200: {"content": {t: {} for t in AUDIO_MEDIA_TYPES.values()}}})
async def speech(body: SpeechRequest, request: Request, routing: RouterDep, settings: SettingsDep) -> Response:
    text = body.input.strip()
    if not text:
        raise InvalidRequest("'input' is empty; send the text to speak.", param="input")
    if len(text) > settings.max_speech_chars:
        raise InvalidRequest(
            f"'input' has {len(text)} characters; the limit is {settings.max_speech_chars}. "
            "Split the text into shorter requests.", param="input",
        )
    voice, speed, fmt = body.voice, body.speed, body.response_format
    usage.record(characters=len(text))

    async def stream(model: ModelHandle) -> StreamingResponse:
        sample_rate = (await model.info()).sample_rate(voice)
        # A route falls back only until the first piece: then the response has started.
        pcm = await primed(model.synthesize_stream(text, voice, speed))
        return StreamingResponse(encoded(_count_seconds(pcm, sample_rate), sample_rate, fmt),
                                 media_type=AUDIO_MEDIA_TYPES[fmt], headers=routing.headers(body.model, model.spec))

    async def whole(model: ModelHandle) -> Response:
        sample_rate = (await model.info()).sample_rate(voice)
        # Counted per attempt, so an attempt that failed half-way (a route retried or fell back)
        # adds no seconds to the request's usage.
        pcm = await model.synthesize(text, voice, speed)
        usage.record(audio_seconds=len(pcm) / (2 * sample_rate))
        audio = pcm if fmt == "pcm" else await asyncio.to_thread(encode_audio, pcm, sample_rate, fmt)
        return Response(audio, media_type=AUDIO_MEDIA_TYPES[fmt], headers=routing.headers(body.model, model.spec))

    def caller() -> str | None:
        return caller_key(request)

    if body.stream:
        streamed, _ = await routing.call(body.model, "synthesize", stream, caller=caller)
        return streamed
    # The same text and voice give the same audio: a route's retries apply.
    audio, _ = await routing.call(body.model, "synthesize", whole, caller=caller, retry=True)
    return audio


async def _count_seconds(pcm: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
    """Pass s16le mono PCM through, adding its duration to the request's audio seconds (the
    middleware reads them once the body is sent)."""
    try:
        async for piece in pcm:
            usage.record(audio_seconds=len(piece) / (2 * sample_rate))
            yield piece
    finally:
        await pcm.aclose()  # type: ignore[attr-defined]
