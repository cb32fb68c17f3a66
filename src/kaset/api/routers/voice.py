"""The voice assistant: POST /v1/voice/ask (one call) and the /v1/voice/stream WebSocket.

The protocol for client developers is in docs/voice.md. This module is the HTTP and WebSocket
side only: the credential, the quota slot, the receive loop, the request-log row. A
connection's state machine (start, audio, partials, stop, answer) is
`kaset.pipelines.voice_session`; the answering itself (sentences cut as the LLM writes, each
spoken as soon as it is ready) is `kaset.pipelines.voice`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from kaset import usage
from kaset.api.deps import (
    AdvisorDep,
    IdentityDep,
    ModelsDep,
    QuotasDep,
    RouterDep,
    SettingsDep,
    SpeechDep,
    check_model_allowed,
    require_multipart,
)
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
from kaset.auth.identity import Identity
from kaset.auth.principal import Principal
from kaset.config import Settings
from kaset.errors import AuthenticationFailed, InvalidRequest, KasetError
from kaset.ids import new_id
from kaset.metrics import VoiceSessions
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.speech import SpeechService
from kaset.pipelines.voice import MODES, VoiceAssistant, collect
from kaset.pipelines.voice_session import (
    ClientGone,
    SessionClosed,
    VoiceSession,
    answer_language,
    close_code,
    error_event,
)
from kaset.quotas.enforcer import Admission
from kaset.registry.catalog import Catalog
from kaset.registry.routing import Router, caller_key
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


def _language(value: str) -> str | None:
    if value not in ("en", "th", "auto"):
        raise InvalidRequest(f"Unknown language '{value}'. Use 'en', 'th' or 'auto'.", param="language")
    return None if value == "auto" else value


def assistant_for(speech: SpeechService, advisor: AdviceService, routing: Router) -> VoiceAssistant:
    return VoiceAssistant(speech, advisor, routing)


# --- one call ---------------------------------------------------------------------------------


@policy(budgets=("audio_seconds_per_day", "tokens_per_day"))
@router.post("/v1/voice/ask", response_model=VoiceAskResponse, dependencies=[Depends(require_multipart)])
async def ask(
    request: Request,
    speech: SpeechDep,
    advisor: AdvisorDep,
    routing: RouterDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The spoken question: wav, mp3, webm, ogg, m4a or flac.")],
    mode: Annotated[str, Form(description="'advice' (Crop Guardian) or 'assistant' (the local LLM).")] = "advice",
    language: Annotated[str, Form(description="en, th or auto (detect).")] = "auto",
    voice: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form(description="wav, mp3 or opus.")] = "wav",
    crop: Annotated[str | None, Form()] = None,
    speak: Annotated[bool, Form(description="Also speak the answer.")] = True,
) -> VoiceAskResponse:
    started = time.perf_counter()
    if mode not in MODES:
        raise InvalidRequest(f"Unknown mode '{mode}'. Use 'advice' or 'assistant'.", param="mode")
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest(f"Unsupported response_format '{response_format}'. Use wav, mp3 or opus.",
                             param="response_format")
    asked = _language(language)
    assistant = assistant_for(speech, advisor, routing)
    for name in assistant.models_for(mode, asked or "auto"):
        check_model_allowed(request, name)
    data = await read_upload(file, settings.max_upload_bytes, noun="recording",
                             empty_message="The uploaded recording is empty (0 bytes). Record the question again.",
                             empty_code="no_speech")

    def caller() -> str | None:
        return caller_key(request)

    prompt = assistant.hearing_prompt(mode, asked, crop=crop)
    heard = await speech.hear(data, language=asked, caller=caller, prompt=prompt)
    usage.record(audio_seconds=heard.seconds)
    heard_at = time.perf_counter()
    events = assistant.answer(heard.text, mode=mode, language=answer_language(asked, heard), crop=crop,
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


async def _authenticate(ws: WebSocket, settings: Settings, identity: Identity) -> Principal | None:
    if not settings.auth_enabled:
        return None
    credential = _credential(ws)
    if credential is None:
        raise AuthenticationFailed(
            "No API key provided. Offer the subprotocols ['kaset.v1', 'kaset-key.<key>'] (browsers) or send "
            "'Authorization: Bearer <key>'.", code="missing_api_key")
    return await identity.authenticate(credential)


def _session(ws: WebSocket, assistant: VoiceAssistant, settings: Settings, catalog: Catalog,
             principal: Principal | None) -> VoiceSession:
    async def send(text: str) -> None:
        try:
            await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError) as exc:  # RuntimeError: sent after the close
            raise ClientGone from exc

    async def close(code: int, error: KasetError | None) -> None:
        await _send_and_close(ws, code, error)

    allow = None
    if principal is not None and principal.allowed_models is not None:
        def allow(name: str) -> None:
            ensure_allowed(principal, name, catalog)

    return VoiceSession(assistant, max_seconds=float(settings.max_audio_seconds), send=send,
                        close=close, parse_start=StreamStart.model_validate, allow=allow)


async def _receive(ws: WebSocket, session: VoiceSession) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is not None:
            session.on_audio(data)
            continue
        await session.on_text(message.get("text") or "")


STREAM_BUDGETS: tuple[Budget, ...] = ("audio_seconds_per_day", "tokens_per_day")


@policy(budgets=STREAM_BUDGETS)
@sockets.websocket(STREAM_PATH)
async def stream(ws: WebSocket, settings: SettingsDep, identity: IdentityDep, quotas: QuotasDep, models: ModelsDep,
                 speech: SpeechDep, advisor: AdvisorDep, routing: RouterDep) -> None:
    started, started_at = time.perf_counter(), time.time()
    offered = ws.scope.get("subprotocols") or []
    # Accept first, then refuse with an event: a browser sees a close code, not a failed handshake.
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    # Units of the whole session (audio heard and spoken, tokens): tasks started below copy the
    # context, so they all add to this one object; charged to the budgets when the session ends.
    session_usage = RequestUsage()
    admission: Admission | None = None
    try:
        principal = await _authenticate(ws, settings, identity)
        ws.state.key = principal  # who the request log and metrics charge, as for HTTP requests
        if principal is not None:
            admission = await quotas.admit(principal, STREAM_BUDGETS)
    except KasetError as exc:
        await _send_and_close(ws, close_code(exc), exc)
        _log_session(ws, new_id(), started, started_at, exc.status_code, session_usage)
        return
    token = current_usage.set(session_usage)
    sessions = voice_sessions(ws.app)
    sessions.open += 1
    session = _session(ws, assistant_for(speech, advisor, routing), settings, models.catalog, principal)
    # The session's outcome in HTTP terms for the request log: 200 when it ended normally or the
    # client left, the error's status when the server ended it.
    status = 200
    log.info("voice session %s opened (%d open)", session.id, sessions.open)
    try:
        await _receive(ws, session)
    except SessionClosed as close:
        status = close.error.status_code if close.error is not None else 200
        await _send_and_close(ws, close.code, close.error)
    except KasetError as exc:
        status = exc.status_code
        await _send_and_close(ws, close_code(exc), exc)
    except (WebSocketDisconnect, ClientGone):
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
