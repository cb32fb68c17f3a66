"""The voice assistant: POST /v1/voice/ask (one call) and the /v1/voice/stream WebSocket.

The protocol for client developers is in docs/voice.md; the answering itself (sentences cut as
the LLM writes, each spoken as soon as it is ready) in `kaset.pipelines.voice`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, WebSocket
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from kaset import usage
from kaset.api.deps import Services, check_model_allowed, require_multipart, services
from kaset.api.policy import Budget, policy
from kaset.api.routers.advice import citations
from kaset.api.schemas.voice import (
    StreamStart,
    VoiceAskResponse,
    VoiceAudio,
    VoiceModels,
    VoiceNotice,
    VoiceTimings,
)
from kaset.api.telemetry import Telemetry
from kaset.api.uploads import read_upload
from kaset.auth.allowlist import ensure_allowed
from kaset.auth.principal import Principal
from kaset.errors import AuthenticationFailed, InvalidRequest, KasetError
from kaset.ids import new_id
from kaset.media.audio import ASR_SAMPLE_RATE
from kaset.pipelines.speech import Heard
from kaset.pipelines.voice import MODES, Answered, Audio, Delta, Notice, VoiceAssistant, VoiceEvent, collect
from kaset.quotas.enforcer import Admission
from kaset.registry.routing import caller_key
from kaset.usage import RequestUsage, current_usage

log = logging.getLogger(__name__)

router = APIRouter(tags=["voice"])
# WebSocket routes: included without the HTTP `authenticate` dependency (they check the
# credential from the subprotocol or header themselves).
sockets = APIRouter(tags=["voice"])

STREAM_PATH = "/v1/voice/stream"
SUBPROTOCOL = "kaset.v1"
KEY_PREFIX = "kaset-key."
RESPONSE_FORMATS = ("wav", "mp3", "opus")
# New audio that triggers a fresh partial transcript of the whole buffer.
PARTIAL_EVERY_S = 1.0
# Partials re-transcribe the whole buffer, so their cost grows with it: past this length only
# the final transcript (at stop) is made.
PARTIAL_MAX_S = 30.0


def _language(value: str) -> str | None:
    if value not in ("en", "th", "auto"):
        raise InvalidRequest(f"Unknown language '{value}'. Use 'en', 'th' or 'auto'.", param="language")
    return None if value == "auto" else value


def _answer_language(asked: str | None, heard: Heard) -> str | None:
    """The language to answer in: the one asked for, else the one heard if it is en/th, else
    None (the advisor detects it from the text, and refuses other languages clearly)."""
    if asked is not None:
        return asked
    return heard.language if heard.language in ("en", "th") else None


def assistant_for(svc: Services) -> VoiceAssistant:
    return VoiceAssistant(svc.speech, svc.advisor, svc.router)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- one call ---------------------------------------------------------------------------------


@policy(budgets=("audio_seconds_per_day", "tokens_per_day"))
@router.post("/v1/voice/ask", response_model=VoiceAskResponse, dependencies=[Depends(require_multipart)])
async def ask(
    request: Request,
    file: Annotated[UploadFile, File(description="The spoken question: wav, mp3, webm, ogg, m4a or flac.")],
    mode: Annotated[str, Form(description="'advice' (Crop Guardian) or 'assistant' (the local LLM).")] = "advice",
    language: Annotated[str, Form(description="en, th or auto (detect).")] = "auto",
    voice: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form(description="wav, mp3 or opus.")] = "wav",
    crop: Annotated[str | None, Form()] = None,
    speak: Annotated[bool, Form(description="Also speak the answer.")] = True,
    svc: Services = Depends(services),
) -> VoiceAskResponse:
    started = time.perf_counter()
    if mode not in MODES:
        raise InvalidRequest(f"Unknown mode '{mode}'. Use 'advice' or 'assistant'.", param="mode")
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest(f"Unsupported response_format '{response_format}'. Use wav, mp3 or opus.",
                             param="response_format")
    asked = _language(language)
    assistant = assistant_for(svc)
    for name in assistant.models_for(mode, asked or "auto"):
        check_model_allowed(request, name)
    data = await read_upload(file, svc.settings.max_upload_bytes, noun="recording",
                             empty_message="The uploaded recording is empty (0 bytes). Record the question again.",
                             empty_code="no_speech")

    def caller() -> str | None:
        return caller_key(request)

    heard = await svc.speech.hear(data, language=asked, caller=caller)
    usage.record(audio_seconds=heard.seconds)
    heard_at = time.perf_counter()
    events = assistant.answer(heard.text, mode=mode, language=_answer_language(asked, heard), crop=crop,
                              speak=speak, voice=voice, fmt="pcm", caller=caller, heard=heard)
    reply = await collect(events, response_format)
    answered = reply.answered
    audio = None
    if reply.audio is not None and reply.speech_model is not None:
        audio = VoiceAudio(format=response_format, data=base64.b64encode(reply.audio).decode(),
                           seconds=round(reply.audio_seconds, 3), model=reply.speech_model, voice=reply.voice)
    return VoiceAskResponse(
        transcript=heard.text, language=answered.language, answer=answered.answer, sentences=answered.sentences,
        audio=audio, notices=[VoiceNotice(code=n.code, message=n.message) for n in answered.notices],
        path=answered.path, understood=answered.understood,
        citations=citations(answered.advice) if answered.advice is not None else [],
        models=VoiceModels(transcribe=heard.model, answer=answered.model, speech=reply.speech_model),
        timings=VoiceTimings(
            transcribe_ms=round((heard_at - started) * 1000, 1), answer_ms=round(answered.text_s * 1000, 1),
            first_audio_ms=(None if answered.first_audio_s is None
                            else round((heard_at - started + answered.first_audio_s) * 1000, 1)),
            total_ms=round((time.perf_counter() - started) * 1000, 1)))




# --- the stream -------------------------------------------------------------------------------


class _Close(Exception):
    """End the connection: send `error` (if any) and close with `code`."""

    def __init__(self, code: int, error: KasetError | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


def close_code(error: KasetError) -> int:
    """The WebSocket close code for an error: 4401 auth, 4429 limits, 4400 bad request, 1011 ours."""
    status = error.status_code
    if status in (401, 403):
        return 4401
    if status == 429:
        return 4429
    if 400 <= status < 500:
        return 4400
    return 1011


def error_event(error: KasetError) -> dict[str, Any]:
    """The HTTP API's error envelope, as an event."""
    return {"type": "error", **error.envelope()}


class VoiceSessions(Collector):
    """Open /v1/voice/stream sessions of one app, as the `kaset_voice_sessions` gauge."""

    def __init__(self) -> None:
        self.open = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("kaset_voice_sessions", "Open /v1/voice/stream WebSocket sessions.",
                                value=self.open)


def voice_sessions(app: Any) -> VoiceSessions:
    """The app's session counter, registered with its metrics on first use."""
    sessions: VoiceSessions | None = getattr(app.state, "voice_sessions", None)
    if sessions is None:
        sessions = app.state.voice_sessions = VoiceSessions()
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.registry.register(sessions)
    return sessions


def _credential(ws: WebSocket) -> str | None:
    for offered in ws.scope.get("subprotocols") or []:
        if offered.startswith(KEY_PREFIX) and len(offered) > len(KEY_PREFIX):
            return str(offered[len(KEY_PREFIX):])
    header = ws.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


async def _authenticate(ws: WebSocket, svc: Services) -> Principal | None:
    if not svc.settings.auth_enabled:
        return None
    credential = _credential(ws)
    if credential is None:
        raise AuthenticationFailed(
            "No API key provided. Offer the subprotocols ['kaset.v1', 'kaset-key.<key>'] (browsers) or send "
            "'Authorization: Bearer <key>'.", code="missing_api_key")
    return await svc.identity.authenticate(credential)


STREAM_BUDGETS: tuple[Budget, ...] = ("audio_seconds_per_day", "tokens_per_day")


@policy(budgets=STREAM_BUDGETS)
@sockets.websocket(STREAM_PATH)
async def stream(ws: WebSocket) -> None:
    svc: Services = ws.app.state.services
    started, started_at = time.perf_counter(), time.time()
    offered = ws.scope.get("subprotocols") or []
    # Accept first, then refuse with an event: a browser sees a close code, not a failed handshake.
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    # Units of the whole session (audio heard and spoken, tokens): tasks started below copy the
    # context, so they all add to this one object; charged to the budgets when the session ends.
    session_usage = RequestUsage()
    admission: Admission | None = None
    try:
        principal = await _authenticate(ws, svc)
        ws.state.key = principal  # who the request log and metrics charge, as for HTTP requests
        if principal is not None:
            admission = await svc.quotas.admit(principal, STREAM_BUDGETS)
    except KasetError as exc:
        await _send_and_close(ws, close_code(exc), exc)
        _log_session(ws, new_id(), started, started_at, exc.status_code, session_usage)
        return
    token = current_usage.set(session_usage)
    sessions = voice_sessions(ws.app)
    sessions.open += 1
    session = _Session(ws, svc, principal)
    # The session's outcome in HTTP terms for the request log: 200 when it ended normally or the
    # client left, the error's status when the server ended it.
    status = 200
    log.info("voice session %s opened (%d open)", session.id, sessions.open)
    try:
        await session.run()
    except _Close as close:
        status = close.error.status_code if close.error is not None else 200
        await _send_and_close(ws, close.code, close.error)
    except KasetError as exc:
        status = exc.status_code
        await _send_and_close(ws, close_code(exc), exc)
    except WebSocketDisconnect:
        pass
    except Exception:
        status = 500
        log.exception("voice session %s failed", session.id)
        await _send_and_close(ws, 1011, KasetError("The voice session failed on the server. Try again."))
    finally:
        current_usage.reset(token)

        async def end() -> None:
            try:
                await session.shutdown()
            finally:
                sessions.open -= 1
                if admission is not None:
                    await admission.enforcer.finish(admission, session_usage)
                _log_session(ws, session.id, started, started_at, status, session_usage)
                log.info("voice session %s closed (%d open; %.1f s of audio)", session.id, sessions.open,
                         session_usage.audio_seconds)

        # Shielded: a server cancelling the handler (shutdown, a test client leaving) must still
        # give the quota slot back and drop the buffers.
        await asyncio.shield(asyncio.ensure_future(end()))


def _log_session(ws: WebSocket, session_id: str, started: float, started_at: float, status: int,
                 session_usage: RequestUsage) -> None:
    """One request-log row and one metrics observation for the whole session, like an HTTP request."""
    telemetry: Telemetry | None = getattr(ws.app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.finish(ws.scope, session_id, started_at, time.perf_counter() - started, 0.0, status, None,
                         session_usage)


async def _send_and_close(ws: WebSocket, code: int, error: KasetError | None) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        if ws.application_state == WebSocketState.CONNECTED:
            if error is not None:
                await ws.send_text(json.dumps(error_event(error), ensure_ascii=False))
            await ws.close(code)


class _Session:
    """One connection: idle → (start) recording → (stop) answering → idle, any number of times."""

    def __init__(self, ws: WebSocket, svc: Services, principal: Principal | None) -> None:
        self.id = new_id()
        self.ws = ws
        self.svc = svc
        self.principal = principal
        self.assistant = assistant_for(svc)
        self.max_seconds = float(svc.settings.max_audio_seconds)
        self.start: StartMessage | None = None
        self.pcm = bytearray()
        self.partial: asyncio.Task[None] | None = None
        self.partial_heard: tuple[int, Heard] | None = None  # (bytes covered, what was heard)
        self.partial_from = 0  # buffer length the last partial started at
        self.answering: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        # One sender at a time: partials and the answer are sent from different tasks.
        async with self._send_lock:
            await self.ws.send_text(json.dumps(payload, ensure_ascii=False))

    async def run(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                self.on_audio(data)
                continue
            await self.on_text(message.get("text") or "")

    async def shutdown(self) -> None:
        """Cancel what runs and drop the buffers (disconnect, error, end)."""
        await self._cancel()

    async def _cancel(self) -> None:
        tasks = [t for t in (self.answering, self.partial) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.answering = self.partial = None
        self._reset()

    def _reset(self) -> None:
        self.start = None
        self.pcm = bytearray()
        self.partial_heard = None
        self.partial_from = 0

    # --- messages ---------------------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise _Close(4400, InvalidRequest("Messages must be JSON text, e.g. {\"type\": \"start\"}.",
                                              code="invalid_json")) from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            await self.on_start(message)
        elif kind == "stop":
            if self.start is None or self.answering is not None:
                raise _Close(4400, InvalidRequest("'stop' ends a recording: send 'start' and the audio first.",
                                                  param="type", code="not_recording"))
            self.answering = asyncio.create_task(self.respond(self.start, bytes(self.pcm), time.perf_counter()))
        elif kind == "cancel":
            await self._cancel()  # back to idle; nothing more is sent for that question
        else:
            raise _Close(4400, InvalidRequest(
                f"Unknown message type {kind!r}. Send 'start', then audio, then 'stop' (or 'cancel').",
                param="type", code="unknown_message"))

    async def on_start(self, message: dict[str, Any]) -> None:
        if self.answering is not None and not self.answering.done():
            raise _Close(4400, InvalidRequest("An answer is still running: wait for 'done' or send 'cancel' "
                                              "before the next 'start'.", param="type", code="busy"))
        if self.start is not None:
            raise _Close(4400, InvalidRequest("'start' came twice: send 'stop' or 'cancel' first.",
                                              param="type", code="busy"))
        try:
            start = StreamStart.model_validate(message)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            hint = {"mode": " Use 'assistant', 'advice' or 'transcribe'.", "language": " Use 'en', 'th' or 'auto'.",
                    "response_format": " Use wav, mp3 or opus."}.get(where, "")
            raise _Close(4400, InvalidRequest(f"Invalid 'start' message: {where}: {first['msg']}.{hint}",
                                              param=where, code="invalid_start")) from None
        if self.principal is not None and self.principal.allowed_models is not None:
            mode = "advice" if start.mode == "transcribe" else start.mode
            names = self.assistant.models_for(mode, start.language)
            for name in names[:1] if start.mode == "transcribe" else names:
                ensure_allowed(self.principal, name, self.svc.models.catalog)
        self._reset()
        self.start = start
        self.answering = None
        await self.send({"type": "ready", "session": self.id})

    def on_audio(self, data: bytes) -> None:
        start = self.start
        if start is None or self.answering is not None:
            raise _Close(4400, InvalidRequest("Audio came before 'start' (or after 'stop'). Send "
                                              "{\"type\": \"start\", ...} first.", code="not_recording"))
        self.pcm.extend(data)
        seconds = len(self.pcm) / 2 / start.sample_rate
        if seconds > self.max_seconds:
            raise _Close(4400, InvalidRequest(
                f"The recording is longer than this server's limit of {self.max_seconds:g} seconds. Send 'stop' "
                "sooner, or ask in shorter pieces.", param="audio", code="audio_too_long"))
        new_seconds = (len(self.pcm) - self.partial_from) / 2 / start.sample_rate
        # One partial at a time: a slow model skips partials rather than queueing them up.
        if (new_seconds >= PARTIAL_EVERY_S and seconds <= PARTIAL_MAX_S
                and (self.partial is None or self.partial.done())):
            self.partial_from = len(self.pcm)
            self.partial = asyncio.create_task(self._partial(start, bytes(self.pcm)))

    # --- hearing ----------------------------------------------------------------------------

    async def _hear(self, start: StartMessage, pcm: bytes, require_speech: bool) -> Heard:
        samples = await asyncio.to_thread(to_16k, pcm, start.sample_rate)
        language = None if start.language == "auto" else start.language
        return await self.svc.speech.hear_samples(samples, language=language, require_speech=require_speech)

    async def _partial(self, start: StartMessage, pcm: bytes) -> None:
        try:
            heard = await self._hear(start, pcm, require_speech=False)
        except KasetError as exc:  # best effort: the final transcript is what counts
            log.info("voice session %s: partial transcript skipped: %s", self.id, exc.message)
            return
        self.partial_heard = (len(pcm), heard)
        if heard.text:
            await self.send({"type": "transcript.partial", "text": heard.text})

    async def respond(self, start: StartMessage, pcm: bytes, stopped: float) -> None:
        """After 'stop': the final transcript, then the answer (unless transcribing only), then done.
        A question's own error (no speech, unsupported language) is sent and the session goes on."""
        try:
            await self._respond(start, pcm, stopped)
        except KasetError as exc:
            if close_code(exc) != 4400:
                await _send_and_close(self.ws, close_code(exc), exc)
                return
            await self.send(error_event(exc))
        except (WebSocketDisconnect, RuntimeError):
            return  # the client left mid-answer; the receive loop ends the session
        except Exception:
            log.exception("voice session %s: answer failed", self.id)
            await _send_and_close(self.ws, 1011, KasetError("The answer failed on the server. Try again."))
            return
        finally:
            self._reset()
            self.answering = None

    async def _respond(self, start: StartMessage, pcm: bytes, stopped: float) -> None:
        if len(pcm) < 2:
            raise InvalidRequest("No audio was recorded before 'stop'. Hold the button while you speak.",
                                 param="audio", code="no_speech")
        heard: Heard | None = None
        if self.partial is not None and not self.partial.done():
            await self.partial  # soon done; if it covered all the audio its text is the final one
        if self.partial_heard is not None and self.partial_heard[1].text:
            covered, partial = self.partial_heard
            # Reused when it heard everything, or all but a quiet tail (the pause before the
            # person lets go of the button): a second transcription would only add latency.
            if covered == len(pcm) or (len(pcm) - covered < 2 * start.sample_rate * PARTIAL_EVERY_S
                                       and _quiet(pcm[covered:])):
                heard = partial
        if heard is None:
            heard = await self._hear(start, pcm, require_speech=True)
        usage.record(audio_seconds=len(pcm) / 2 / start.sample_rate)
        heard_s = time.perf_counter() - stopped
        await self.send({"type": "transcript.final", "text": heard.text, "language": heard.language})
        timings: dict[str, float | None] = {"transcribe_ms": _ms(heard_s), "first_text_ms": None,
                                            "first_audio_ms": None}
        answer = ""
        if start.mode != "transcribe":
            asked = None if start.language == "auto" else start.language
            events = self.assistant.answer(heard.text, mode=start.mode, language=_answer_language(asked, heard),
                                           crop=start.crop, voice=start.voice, fmt=start.response_format,
                                           heard=heard)
            answer = await self._send_answer(events, stopped, timings)
        timings["total_ms"] = _ms(time.perf_counter() - stopped)
        await self.send({"type": "done", "answer": answer, "timings": timings})

    async def _send_answer(self, events: Any, stopped: float, timings: dict[str, float | None]) -> str:
        answer = ""
        try:
            event: VoiceEvent
            async for event in events:
                if isinstance(event, Delta):
                    if timings["first_text_ms"] is None:
                        timings["first_text_ms"] = _ms(time.perf_counter() - stopped)
                    await self.send({"type": "answer.delta", "index": event.index, "text": event.text})
                elif isinstance(event, Audio):
                    if timings["first_audio_ms"] is None:
                        timings["first_audio_ms"] = _ms(time.perf_counter() - stopped)
                    spoken = event.spoken
                    await self.send({"type": "audio", "index": event.index, "format": spoken.format,
                                     "data": base64.b64encode(spoken.audio).decode(),
                                     "seconds": round(spoken.seconds, 3)})
                elif isinstance(event, Notice):
                    await self.send({"type": "notice", "code": event.code, "message": event.message})
                elif isinstance(event, Answered):
                    answer = event.answer
        finally:
            await events.aclose()  # cancels generation and synthesis if we stopped early
        return answer


StartMessage = StreamStart
# Below this RMS (about -40 dBFS) a stretch of 16-bit audio holds no speech worth transcribing.
QUIET_RMS = 330.0


def _quiet(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
    return samples.size == 0 or float(np.sqrt(np.mean(samples * samples))) < QUIET_RMS


def to_16k(pcm: bytes, rate: int) -> np.ndarray:
    """s16le mono PCM at `rate` → float32 samples at 16 kHz (linear interpolation: plenty for ASR)."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32) / 32768.0
    if rate == ASR_SAMPLE_RATE or samples.size == 0:
        return samples
    count = max(1, round(samples.size * ASR_SAMPLE_RATE / rate))
    positions = np.linspace(0, samples.size - 1, count)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
