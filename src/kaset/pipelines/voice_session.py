"""One /v1/voice/stream connection's state machine, apart from the socket.

    idle → (start) recording → (stop) answering → idle, any number of times

The voice router owns the WebSocket (accepting, the credential, the receive loop, closing):
it hands each message to `on_text` / `on_audio` and gives the session a way to send a text
frame and to close. While recording, every `PARTIAL_EVERY_S` of new audio starts a fresh
partial transcript of the whole buffer (one at a time); after 'stop' the final transcript
(the last partial when it heard everything), the answer's events (`kaset.pipelines.voice`)
and 'done'. The protocol for client developers is in docs/voice.md.

A message the protocol does not allow raises `SessionClosed` (the router sends the error and
closes with its code); a question's own error (no speech, an unsupported language) is sent as
an `error` event and the session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from pydantic import ValidationError

from kaset import usage
from kaset.errors import InvalidRequest, KasetError
from kaset.ids import new_id
from kaset.media.pcm import is_quiet, pcm_seconds, to_16k
from kaset.pipelines.speech import Heard
from kaset.pipelines.voice import Answered, Audio, Delta, Notice, VoiceAssistant, VoiceEvent

log = logging.getLogger(__name__)

# New audio that triggers a fresh partial transcript of the whole buffer.
PARTIAL_EVERY_S = 1.0
# Partials re-transcribe the whole buffer, so their cost grows with it: past this length only
# the final transcript (at stop) is made.
PARTIAL_MAX_S = 30.0


class StartMessage(Protocol):
    """The 'start' message's fields the session reads (the API's `StreamStart` schema)."""

    @property
    def mode(self) -> str: ...  # assistant, advice or transcribe
    @property
    def language(self) -> str: ...  # en, th or auto
    @property
    def voice(self) -> str | None: ...
    @property
    def response_format(self) -> str: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def crop(self) -> str | None: ...
    @property
    def topic(self) -> str | None: ...


class SessionClosed(Exception):
    """End the connection: send `error` (if any) and close with `code`."""

    def __init__(self, code: int, error: KasetError | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


class ClientGone(Exception):
    """The client left: a send found the connection closed (raised by the router's `send`)."""


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


def answer_language(asked: str | None, heard: Heard) -> str | None:
    """The language to answer in: the one asked for, else the one heard if it is en/th, else
    None (the advisor detects it from the text, and refuses other languages clearly)."""
    if asked is not None:
        return asked
    return heard.language if heard.language in ("en", "th") else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class VoiceSession:
    """One connection's questions. `send` sends one text frame (raising `ClientGone` when the
    client has left); `close` sends an error event (if any) and closes with a code; `parse_start`
    validates a 'start' message (a pydantic model's `model_validate`); `allow` raises for a
    model the caller may not use (None: every model is allowed)."""

    def __init__(self, assistant: VoiceAssistant, *, max_seconds: float, send: Callable[[str], Awaitable[None]],
                 close: Callable[[int, KasetError | None], Awaitable[None]],
                 parse_start: Callable[[dict[str, Any]], StartMessage],
                 allow: Callable[[str], None] | None = None) -> None:
        self.id = new_id()
        self.assistant = assistant
        self.max_seconds = max_seconds
        self._send_text = send
        self._close = close
        self._parse_start = parse_start
        self._allow = allow
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
            await self._send_text(json.dumps(payload, ensure_ascii=False))

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
            raise SessionClosed(4400, InvalidRequest("Messages must be JSON text, e.g. {\"type\": \"start\"}.",
                                                     code="invalid_json")) from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            await self.on_start(message)
        elif kind == "stop":
            if self.start is None or self.answering is not None:
                raise SessionClosed(4400, InvalidRequest("'stop' ends a recording: send 'start' and the audio "
                                                         "first.", param="type", code="not_recording"))
            self.answering = asyncio.create_task(self.respond(self.start, bytes(self.pcm), time.perf_counter()))
        elif kind == "cancel":
            await self._cancel()  # back to idle; nothing more is sent for that question
        else:
            raise SessionClosed(4400, InvalidRequest(
                f"Unknown message type {kind!r}. Send 'start', then audio, then 'stop' (or 'cancel').",
                param="type", code="unknown_message"))

    async def on_start(self, message: dict[str, Any]) -> None:
        if self.answering is not None and not self.answering.done():
            raise SessionClosed(4400, InvalidRequest("An answer is still running: wait for 'done' or send "
                                                     "'cancel' before the next 'start'.", param="type", code="busy"))
        if self.start is not None:
            raise SessionClosed(4400, InvalidRequest("'start' came twice: send 'stop' or 'cancel' first.",
                                                     param="type", code="busy"))
        try:
            start = self._parse_start(message)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            hint = {"mode": " Use 'assistant', 'advice' or 'transcribe'.", "language": " Use 'en', 'th' or 'auto'.",
                    "response_format": " Use wav, mp3 or opus."}.get(where, "")
            raise SessionClosed(4400, InvalidRequest(f"Invalid 'start' message: {where}: {first['msg']}.{hint}",
                                                     param=where, code="invalid_start")) from None
        if self._allow is not None:
            mode = "advice" if start.mode == "transcribe" else start.mode
            names = self.assistant.models_for(mode, start.language)
            for name in names[:1] if start.mode == "transcribe" else names:
                self._allow(name)
        self._reset()
        self.start = start
        self.answering = None
        await self.send({"type": "ready", "session": self.id})

    def on_audio(self, data: bytes) -> None:
        start = self.start
        if start is None or self.answering is not None:
            raise SessionClosed(4400, InvalidRequest("Audio came before 'start' (or after 'stop'). Send "
                                                     "{\"type\": \"start\", ...} first.", code="not_recording"))
        self.pcm.extend(data)
        seconds = pcm_seconds(len(self.pcm), start.sample_rate)
        if seconds > self.max_seconds:
            raise SessionClosed(4400, InvalidRequest(
                f"The recording is longer than this server's limit of {self.max_seconds:g} seconds. Send 'stop' "
                "sooner, or ask in shorter pieces.", param="audio", code="audio_too_long"))
        new_seconds = pcm_seconds(len(self.pcm) - self.partial_from, start.sample_rate)
        # One partial at a time: a slow model skips partials rather than queueing them up.
        if (new_seconds >= PARTIAL_EVERY_S and seconds <= PARTIAL_MAX_S
                and (self.partial is None or self.partial.done())):
            self.partial_from = len(self.pcm)
            self.partial = asyncio.create_task(self._partial(start, bytes(self.pcm)))

    # --- hearing ----------------------------------------------------------------------------

    async def _hear(self, start: StartMessage, pcm: bytes, require_speech: bool) -> Heard:
        samples = await asyncio.to_thread(to_16k, pcm, start.sample_rate)
        language = None if start.language == "auto" else start.language
        prompt = self.assistant.hearing_prompt(start.mode, language, crop=start.crop, topic=start.topic)
        return await self.assistant.speech.hear_samples(samples, language=language, require_speech=require_speech,
                                                        prompt=prompt)

    async def _partial(self, start: StartMessage, pcm: bytes) -> None:
        try:
            heard = await self._hear(start, pcm, require_speech=False)
        except KasetError as exc:  # best effort: the final transcript is what counts
            log.info("voice session %s: partial transcript skipped: %s", self.id, exc.message)
            return
        self.partial_heard = (len(pcm), heard)
        if heard.text:
            await self.send({"type": "transcript.partial", "text": heard.text})

    # --- answering --------------------------------------------------------------------------

    async def respond(self, start: StartMessage, pcm: bytes, stopped: float) -> None:
        """After 'stop': the final transcript, then the answer (unless transcribing only), then done.
        A question's own error (no speech, unsupported language) is sent and the session goes on."""
        try:
            await self._respond(start, pcm, stopped)
        except KasetError as exc:
            if close_code(exc) != 4400:
                await self._close(close_code(exc), exc)
                return
            await self.send(error_event(exc))
        except ClientGone:
            return  # the client left mid-answer; the receive loop ends the session
        except Exception:
            log.exception("voice session %s: answer failed", self.id)
            await self._close(1011, KasetError("The answer failed on the server. Try again."))
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
                                       and is_quiet(pcm[covered:])):
                heard = partial
        if heard is None:
            heard = await self._hear(start, pcm, require_speech=True)
        usage.record(audio_seconds=pcm_seconds(len(pcm), start.sample_rate))
        heard_s = time.perf_counter() - stopped
        await self.send({"type": "transcript.final", "text": heard.text, "language": heard.language})
        timings: dict[str, float | None] = {"transcribe_ms": _ms(heard_s), "first_text_ms": None,
                                            "first_audio_ms": None}
        answer = ""
        if start.mode != "transcribe":
            asked = None if start.language == "auto" else start.language
            events = self.assistant.answer(heard.text, mode=start.mode, language=answer_language(asked, heard),
                                           crop=start.crop, voice=start.voice, fmt=start.response_format,
                                           heard=heard)
            answer = await self._send_answer(events, stopped, timings)
        timings["total_ms"] = _ms(time.perf_counter() - stopped)
        await self.send({"type": "done", "answer": answer, "timings": timings})

    async def _send_answer(self, events: AsyncIterator[VoiceEvent], stopped: float,
                           timings: dict[str, float | None]) -> str:
        answer = ""
        try:
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
            # Cancels generation and synthesis if we stopped early (answer() is an async generator).
            await events.aclose()  # type: ignore[attr-defined]
        return answer
