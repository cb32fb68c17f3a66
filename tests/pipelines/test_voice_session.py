"""The /v1/voice/stream state machine without a socket, with the real models (Whisper, e5 +
curated knowledge, Piper): messages in, events out. The WebSocket around it (credential, quota
slot, close codes on the wire, the request log) is tested in tests/api/test_voice.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kaset.api.schemas.voice import StreamStart
from kaset.errors import InvalidRequest, KasetError, PermissionDenied, RateLimited, UpstreamError
from kaset.media.pcm import is_quiet
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.speech import Heard, SpeechService
from kaset.pipelines.voice import VoiceAssistant
from kaset.pipelines.voice_session import (
    PARTIAL_EVERY_S,
    ClientGone,
    SessionClosed,
    VoiceSession,
    answer_language,
    close_code,
    error_event,
)
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router

module_loop = pytest.mark.asyncio(loop_scope="module")
QUESTION = "What should I do about grey spots on my rice leaves?"


@pytest.fixture(scope="module")
async def assistant(catalog: Catalog, installed: Callable[[str], object],
                    models_dir: Path) -> AsyncIterator[VoiceAssistant]:
    for model in ("e5-small", "piper-joe", "whisper-tiny.en"):
        installed(model)
    manager = ModelManager(catalog, ModelRepository(models_dir))
    router = Router(manager)
    yield VoiceAssistant(SpeechService(router, manager, 60), AdviceService(manager), router)
    await manager.close()


@pytest.fixture(scope="module")
async def question(assistant: VoiceAssistant) -> tuple[bytes, int]:
    """The question spoken by Piper as raw s16le PCM at Piper's own rate (22.05 kHz: the session
    resamples), with half a second of silence after it, as a person pauses before letting go."""
    spoken = await assistant.speech.speak(QUESTION, language="en", fmt="pcm")
    return spoken.audio + b"\0\0" * (spoken.sample_rate // 2), spoken.sample_rate


class Client:
    """The socket's side: the events the session sent, how it closed, and whether the client left."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed: tuple[int, KasetError | None] | None = None
        self.gone_after: str | None = None  # leave once an event of this type was sent

    async def send(self, text: str) -> None:
        if self.gone_after is not None and any(e["type"] == self.gone_after for e in self.events):
            raise ClientGone
        self.events.append(json.loads(text))

    async def close(self, code: int, error: KasetError | None) -> None:
        self.closed = (code, error)

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


def session_for(assistant: VoiceAssistant, client: Client, allow: Callable[[str], None] | None = None,
                max_seconds: float = 60) -> VoiceSession:
    return VoiceSession(assistant, max_seconds=max_seconds, send=client.send, close=client.close,
                        parse_start=StreamStart.model_validate, allow=allow)


async def start(session: VoiceSession, **fields: Any) -> None:
    await session.on_text(json.dumps({"type": "start", **fields}))


async def record(session: VoiceSession, pcm: bytes, rate: int, chunk_s: float = 0.5) -> None:
    """Send the recording in chunks with pauses, as a microphone would (partials need time)."""
    step = int(rate * 2 * chunk_s)
    for offset in range(0, len(pcm), step):
        session.on_audio(pcm[offset:offset + step])
        await asyncio.sleep(0.2)


def loudest(pcm: bytes, rate: int, seconds: float) -> bytes:
    """The loudest stretch of `seconds` in the recording (words, not the pauses around them)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    size = int(rate * seconds)
    energy = np.convolve(samples * samples, np.ones(size), mode="valid")
    begin = int(np.argmax(energy))
    return pcm[2 * begin:2 * (begin + size)]


async def answered(session: VoiceSession) -> None:
    assert session.answering is not None
    await asyncio.wait_for(asyncio.shield(session.answering), 120)


# --- the protocol -----------------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize("messages,code,hint", [
    (["not json"], "invalid_json", "JSON"),
    (['["start"]'], "unknown_message", "Send 'start'"),
    (['{"type": "dance"}'], "unknown_message", "'dance'"),
    (['{"type": "stop"}'], "not_recording", "'stop' ends a recording"),
    (['{"type": "start", "mode": "poetry"}'], "invalid_start", "Use 'assistant', 'advice' or 'transcribe'."),
    (['{"type": "start", "language": "fr"}'], "invalid_start", "Use 'en', 'th' or 'auto'."),
    (['{"type": "start", "response_format": "aiff"}'], "invalid_start", "Use wav, mp3 or opus."),
    (['{"type": "start", "sample_rate": 3}'], "invalid_start", "sample_rate"),
    (['{"type": "start"}', '{"type": "start"}'], "busy", "'start' came twice"),
])
async def test_protocol_errors_close_the_session(assistant: VoiceAssistant, messages: list[str], code: str,
                                                 hint: str) -> None:
    session = session_for(assistant, Client())
    for message in messages[:-1]:
        await session.on_text(message)
    with pytest.raises(SessionClosed) as closed:
        await session.on_text(messages[-1])
    assert closed.value.code == 4400 and isinstance(closed.value.error, InvalidRequest)
    assert closed.value.error.code == code and hint in closed.value.error.message


@module_loop
async def test_audio_outside_a_recording_and_too_long_a_recording(assistant: VoiceAssistant) -> None:
    client = Client()
    session = session_for(assistant, client, max_seconds=2)
    with pytest.raises(SessionClosed) as closed:
        session.on_audio(b"\0\0")
    assert closed.value.error is not None and closed.value.error.code == "not_recording"
    await start(session, mode="transcribe", sample_rate=8000)
    assert client.events == [{"type": "ready", "session": session.id}]
    session.on_audio(b"\0\0" * 8000 * 2)  # exactly the limit
    with pytest.raises(SessionClosed) as closed:
        session.on_audio(b"\0\0")
    assert closed.value.error is not None and closed.value.error.code == "audio_too_long"
    assert "2 seconds" in closed.value.error.message
    await session.shutdown()


@module_loop
async def test_allow_refuses_a_model_the_caller_may_not_use(assistant: VoiceAssistant) -> None:
    asked: list[str] = []

    def allow(name: str) -> None:
        asked.append(name)
        if name != "whisper-tiny.en":
            raise PermissionDenied(f"This key may not use '{name}'.")

    client = Client()
    session = session_for(assistant, client, allow=allow)
    await start(session, mode="transcribe", language="en")  # only the transcriber is checked
    assert asked == ["whisper-tiny.en"] and client.kinds() == ["ready"]
    await session.on_text('{"type": "cancel"}')
    with pytest.raises(PermissionDenied) as refused:
        await start(session, mode="advice", language="en")
    assert asked[0] == "whisper-tiny.en" and asked[-1] in refused.value.message and close_code(refused.value) == 4401
    assert client.kinds() == ["ready"]  # nothing more was sent


@module_loop
async def test_an_empty_or_silent_recording_is_no_speech_and_the_session_goes_on(assistant: VoiceAssistant) -> None:
    client = Client()
    session = session_for(assistant, client)
    await start(session, mode="advice", language="en")
    await session.on_text('{"type": "stop"}')
    await answered(session)
    await start(session, mode="advice", language="en")
    session.on_audio(b"\0\0" * 16000)  # a second of silence: heard, but no words
    await session.on_text('{"type": "stop"}')
    await answered(session)
    errors = [e for e in client.events if e["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["no_speech", "no_speech"]
    assert client.kinds().count("ready") == 2 and client.closed is None and session.start is None


# --- a question ---------------------------------------------------------------------------------


@module_loop
async def test_partials_then_the_final_transcript_then_the_spoken_answer(assistant: VoiceAssistant,
                                                                         question: tuple[bytes, int]) -> None:
    pcm, rate = question
    client = Client()
    session = session_for(assistant, client)
    await start(session, mode="advice", language="en", sample_rate=rate)
    await record(session, pcm, rate)
    await session.on_text('{"type": "stop"}')
    await answered(session)
    kinds = client.kinds()
    final = kinds.index("transcript.final")
    assert "transcript.partial" in kinds[:final] and "transcript.partial" not in kinds[final:]
    assert "rice" in client.events[final]["text"].lower() and client.events[final]["language"] == "en"
    deltas = [e for e in client.events if e["type"] == "answer.delta"]
    audios = [e for e in client.events if e["type"] == "audio"]
    assert deltas and [d["index"] for d in deltas] == list(range(len(deltas)))
    assert [a["index"] for a in audios] == [d["index"] for d in deltas] and audios[0]["format"] == "wav"
    done = client.events[-1]
    assert done["type"] == "done" and done["answer"] == " ".join(d["text"] for d in deltas)
    timings = done["timings"]
    assert 0 <= timings["transcribe_ms"] <= timings["first_text_ms"] <= timings["first_audio_ms"] <= timings[
        "total_ms"]
    assert session.start is None and session.answering is None and not session.pcm  # idle again


@module_loop
@pytest.mark.parametrize("tail,hearings", [
    ("none", 1),  # the partial heard all of it: its text is the final transcript
    ("quiet", 1),  # all but a quiet tail (the pause before letting go of the button): reused too
    ("speech", 2),  # words after the partial: heard again, whole
])
async def test_the_final_transcript_reuses_a_partial_that_heard_enough(
        assistant: VoiceAssistant, question: tuple[bytes, int], tail: str, hearings: int) -> None:
    pcm, rate = question
    words = pcm[: len(pcm) - rate]  # the question without its silence, less its last half second
    client = Client()
    session = session_for(assistant, client)
    heard: list[int] = []
    hear = assistant.speech.hear_samples

    async def counted(samples: np.ndarray, **options: Any) -> Heard:
        heard.append(samples.size)
        return await hear(samples, **options)

    assistant.speech.hear_samples = counted  # type: ignore[method-assign]
    try:
        await start(session, mode="transcribe", language="en", sample_rate=rate)
        session.on_audio(words)  # over PARTIAL_EVERY_S of new audio: one partial of all of it
        assert session.partial is not None
        await session.partial
        assert client.kinds() == ["ready", "transcript.partial"]
        if tail != "none":
            # Under PARTIAL_EVERY_S more, so no second partial.
            extra = b"\0\0" * int(rate * 0.4) if tail == "quiet" else loudest(words, rate, 0.5)
            assert len(extra) / 2 / rate < PARTIAL_EVERY_S and is_quiet(extra) == (tail == "quiet")
            session.on_audio(extra)
            assert session.partial.done()
        await session.on_text('{"type": "stop"}')
        await answered(session)
    finally:
        del assistant.speech.hear_samples
    assert len(heard) == hearings, heard
    assert client.kinds() == ["ready", "transcript.partial", "transcript.final", "done"]
    partial, final = client.events[1]["text"], client.events[2]["text"]
    assert "rice" in final.lower() and (final == partial or hearings == 2)


@module_loop
async def test_the_client_leaving_mid_answer_ends_it_quietly(assistant: VoiceAssistant,
                                                           question: tuple[bytes, int]) -> None:
    pcm, rate = question
    client = Client()
    client.gone_after = "answer.delta"
    session = session_for(assistant, client)
    await start(session, mode="advice", language="en", sample_rate=rate)
    session.on_audio(pcm)
    await session.on_text('{"type": "stop"}')
    await answered(session)
    assert client.kinds()[-1] == "answer.delta" and "done" not in client.kinds()
    assert client.closed is None  # nothing to close: the receive loop ends the session
    assert session.answering is None and session.start is None


@module_loop
async def test_cancel_drops_the_recording(assistant: VoiceAssistant, question: tuple[bytes, int]) -> None:
    pcm, rate = question
    client = Client()
    session = session_for(assistant, client)
    await start(session, mode="transcribe", language="en", sample_rate=rate)
    session.on_audio(pcm)
    await session.on_text('{"type": "stop"}')
    await session.on_text('{"type": "cancel"}')  # mid-transcription
    assert session.answering is None and session.partial is None and not session.pcm
    await asyncio.sleep(0.2)
    assert "transcript.final" not in client.kinds() and "done" not in client.kinds()
    await start(session, mode="transcribe", language="en")  # idle again: a new question may start
    assert client.kinds() == ["ready", "ready"]
    await session.shutdown()


# --- helpers ----------------------------------------------------------------------------------


def test_close_codes_and_error_events() -> None:
    assert close_code(PermissionDenied("no")) == 4401
    assert close_code(RateLimited("slow down", retry_after=1, limit=60)) == 4429
    assert close_code(InvalidRequest("bad")) == 4400
    assert close_code(UpstreamError("ours")) == 1011
    event = error_event(InvalidRequest("bad", param="type", code="busy"))
    assert event["type"] == "error" and event["error"]["code"] == "busy" and event["error"]["param"] == "type"


def test_answer_language() -> None:
    heard = Heard(text="x", language="th", seconds=1.0, model="m")
    assert answer_language("en", heard) == "en" and answer_language(None, heard) == "th"
    assert answer_language(None, Heard(text="x", language="fr", seconds=1.0, model="m")) is None
