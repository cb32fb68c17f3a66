"""The voice assistant over HTTP and WebSocket, with the real default pack (Whisper, SmolLM2,
e5, Piper). Spoken questions are made with the Piper voice through /v1/audio/speech."""

from __future__ import annotations

import base64
import io
import itertools
import time
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.api.test_usage_metrics import logged
from tests.fixtures.audio import silence_wav, tone_wav

QUESTION = "What should I do about grey spots on my rice leaves?"
STREAM = "/v1/voice/stream"
_names = itertools.count()


@pytest.fixture(scope="module")
def question_wav(client: TestClient) -> bytes:
    response = client.post("/v1/audio/speech", json={"model": "piper-joe", "input": QUESTION,
                                                      "response_format": "wav"})
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def question_pcm(question_wav: bytes) -> bytes:
    """The question as 16 kHz s16le mono PCM, what a browser's recorder streams."""
    with wave.open(io.BytesIO(question_wav)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32)
    positions = np.linspace(0, samples.size - 1, round(samples.size * 16000 / rate))
    resampled = np.interp(positions, np.arange(samples.size), samples)
    # Half a second of silence after the words, as a person pauses before letting go of the button.
    return np.concatenate([resampled, np.zeros(8000)]).astype("<i2").tobytes()


def admin_key(client: TestClient) -> str:
    return str(client.headers["Authorization"]).removeprefix("Bearer ")


def new_key(client: TestClient, **fields: Any) -> str:
    user = client.post("/v1/admin/users", json={"username": f"voice-{next(_names)}-{time.time_ns()}",
                                                "role": "developer"})
    assert user.status_code == 201, user.text
    key = client.post("/v1/admin/keys", json={"user_id": user.json()["id"], **fields})
    assert key.status_code == 201, key.text
    return str(key.json()["key"])


def connect(client: TestClient, credential: str) -> Any:
    return client.websocket_connect(STREAM, subprotocols=["kaset.v1", f"kaset-key.{credential}"])


def sessions_open(client: TestClient) -> int:
    return int(client.app.state.voice_sessions.open)  # type: ignore[attr-defined]


def stream_question(ws: Any, pcm: bytes, chunk_s: float = 0.5, pause_s: float = 0.15) -> None:
    """Send the recording in chunks with pauses, as a microphone would (partials need time)."""
    step = int(16000 * 2 * chunk_s)
    for offset in range(0, len(pcm), step):
        ws.send_bytes(pcm[offset:offset + step])
        time.sleep(pause_s)


def events_until_done(ws: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        event = ws.receive_json()
        events.append(event)
        assert event["type"] != "error", event
        if event["type"] == "done":
            return events


# --- one call -------------------------------------------------------------------------------


def test_ask_english_advice_speaks_the_answer(client: TestClient, question_wav: bytes) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", question_wav, "audio/wav")},
                           data={"mode": "advice", "language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    transcript = body["transcript"].lower()
    assert "rice" in transcript and "spots" in transcript
    assert body["language"] == "en" and body["path"] in ("curated", "llm")
    assert body["citations"] and body["citations"][0]["crop"] == "rice"
    assert body["sentences"] and " ".join(body["sentences"]) == body["answer"]
    assert body["notices"] == []
    audio = base64.b64decode(body["audio"]["data"])
    assert audio[:4] == b"RIFF" and body["audio"]["format"] == "wav" and body["audio"]["model"] == "piper-joe"
    with wave.open(io.BytesIO(audio)) as wav:
        assert abs(wav.getnframes() / wav.getframerate() - body["audio"]["seconds"]) < 0.05
    assert body["models"] == {"transcribe": "whisper-tiny.en", "answer": body["models"]["answer"],
                              "speech": "piper-joe"}
    timings = body["timings"]
    assert 0 < timings["transcribe_ms"] < timings["first_audio_ms"] <= timings["total_ms"]


def test_ask_assistant_mode_uses_the_llm(client: TestClient, question_wav: bytes) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", question_wav, "audio/wav")},
                           data={"mode": "assistant", "language": "en", "response_format": "mp3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == "assistant" and body["citations"] == []
    assert body["models"]["answer"] == "smollm2-135m"
    assert body["answer"].strip() and body["audio"]["format"] == "mp3"
    assert len(base64.b64decode(body["audio"]["data"])) > 1000


def test_ask_without_speech(client: TestClient, question_wav: bytes) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", question_wav, "audio/wav")},
                           data={"language": "en", "speak": "false"})
    assert response.status_code == 200, response.text
    assert response.json()["audio"] is None and response.json()["timings"]["first_audio_ms"] is None


def test_ask_silence_is_no_speech(client: TestClient) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", silence_wav(2.0), "audio/wav")},
                           data={"language": "en"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "no_speech"


@pytest.mark.parametrize("field,value,param", [("mode", "poetry", "mode"), ("language", "fr", "language"),
                                                ("response_format", "aiff", "response_format")])
def test_ask_bad_options(client: TestClient, field: str, value: str, param: str) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", tone_wav(1.0), "audio/wav")},
                           data={field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and value in error["message"]


def test_ask_corrupt_audio(client: TestClient) -> None:
    response = client.post("/v1/voice/ask", files={"file": ("q.wav", b"RIFF not really a wav", "audio/wav")})
    assert response.status_code in (400, 415), response.text  # the audio endpoints' decode errors
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- the stream -----------------------------------------------------------------------------


def test_stream_partials_answer_audio_done(client: TestClient, question_pcm: bytes) -> None:
    with connect(client, admin_key(client)) as ws:
        assert ws.accepted_subprotocol == "kaset.v1"
        ws.send_json({"type": "start", "mode": "assistant", "language": "en", "sample_rate": 16000})
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["session"]
        stream_question(ws, question_pcm)
        ws.send_json({"type": "stop"})
        events = events_until_done(ws)
        # A second question on the same connection works too.
        ws.send_json({"type": "start", "mode": "transcribe", "language": "en"})
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(question_pcm)
        ws.send_json({"type": "stop"})
        second = events_until_done(ws)
    kinds = [e["type"] for e in events]
    final = kinds.index("transcript.final")
    assert "transcript.partial" in kinds[:final], kinds
    assert all(k != "transcript.partial" for k in kinds[final:])
    assert "rice" in events[final]["text"].lower() and events[final]["language"] == "en"
    deltas = [e for e in events if e["type"] == "answer.delta"]
    audios = [e for e in events if e["type"] == "audio"]
    assert deltas and [d["index"] for d in deltas] == list(range(len(deltas)))
    assert [a["index"] for a in audios] == [d["index"] for d in deltas]
    assert kinds.index("answer.delta") < kinds.index("audio")
    assert base64.b64decode(audios[0]["data"])[:4] == b"RIFF" and audios[0]["seconds"] > 0
    done = events[-1]
    assert done["answer"] == " ".join(d["text"] for d in deltas)
    timings = done["timings"]
    assert 0 < timings["transcribe_ms"] <= timings["first_text_ms"] <= timings["first_audio_ms"] <= timings["total_ms"]
    assert [e["type"] for e in second][-2:] == ["transcript.final", "done"]
    assert second[-1]["answer"] == "" and "rice" in second[-2]["text"].lower()
    # The session is one request-log row, under its session id, with the units of both questions.
    deadline = time.monotonic() + 10
    while sessions_open(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    row = logged(client, [ready["session"]])[ready["session"]]
    assert row["route"] == STREAM and row["method"] == "WEBSOCKET" and row["status"] == 200
    assert row["key_id"] is not None and row["model"] == "smollm2-135m"
    assert row["audio_seconds"] > 2 * len(question_pcm) / 32000 and row["completion_tokens"] > 0


def test_stream_bad_credential_closes_4401(client: TestClient) -> None:
    with connect(client, "ksk-not-a-key") as ws:
        event = ws.receive_json()
        assert event["type"] == "error" and event["error"]["type"] == "authentication_error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401


def test_stream_allowlist_is_enforced(client: TestClient) -> None:
    key = new_key(client, allowed_models=["whisper-tiny.en"])
    with connect(client, key) as ws:
        ws.send_json({"type": "start", "mode": "transcribe", "language": "en"})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "cancel"})
        ws.send_json({"type": "start", "mode": "assistant", "language": "en"})
        event = ws.receive_json()
        assert event["type"] == "error" and "smollm2-135m" in event["error"]["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401


def test_stream_disconnect_mid_answer_frees_the_session(client: TestClient, question_pcm: bytes) -> None:
    key = new_key(client, limits={"concurrent_requests": 1})
    with connect(client, key) as ws:
        ws.send_json({"type": "start", "mode": "advice", "language": "en"})
        assert ws.receive_json()["type"] == "ready"
        assert sessions_open(client) == 1
        # The key's one slot is held by the session: a second connection is refused.
        with connect(client, key) as second:
            refused = second.receive_json()
            assert refused["error"]["code"] == "concurrency_limit_exceeded"
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == 4429
        ws.send_bytes(question_pcm)
        ws.send_json({"type": "stop"})
        while ws.receive_json()["type"] != "answer.delta":
            pass
        # Leaving the block closes the socket in the middle of the answer.
    deadline = time.monotonic() + 30
    while sessions_open(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions_open(client) == 0
    with connect(client, key) as ws:
        ws.send_json({"type": "start", "mode": "transcribe", "language": "en"})
        assert ws.receive_json()["type"] == "ready"


def test_stream_empty_recording_is_no_speech_and_the_session_goes_on(client: TestClient) -> None:
    with connect(client, admin_key(client)) as ws:
        ws.send_json({"type": "start", "mode": "advice", "language": "en"})
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "stop"})
        event = ws.receive_json()
        assert event["type"] == "error" and event["error"]["code"] == "no_speech"
        ws.send_json({"type": "start", "mode": "advice", "language": "en"})
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"\0\0" * 16000)  # a second of silence: heard, but no words
        ws.send_json({"type": "stop"})
        event = ws.receive_json()
        assert event["type"] == "error" and event["error"]["code"] == "no_speech"


@pytest.mark.parametrize("first,code", [
    ("not json", "invalid_json"),
    ('{"type": "start", "mode": "poetry"}', "invalid_start"),
    ('{"type": "start", "sample_rate": 3}', "invalid_start"),
    ('{"type": "stop"}', "not_recording"),
    ('{"type": "dance"}', "unknown_message"),
    (b"\x00\x01", "not_recording"),
])
def test_stream_bad_input_closes_4400(client: TestClient, first: str | bytes, code: str) -> None:
    with connect(client, admin_key(client)) as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        else:
            ws.send_text(first)
        event = ws.receive_json()
        assert event["type"] == "error" and event["error"]["code"] == code, event
        assert event["error"]["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4400


def test_stream_too_long_recording_closes_4400(client: TestClient) -> None:
    limit = client.app.state.settings.max_audio_seconds  # type: ignore[attr-defined]
    with connect(client, admin_key(client)) as ws:
        ws.send_json({"type": "start", "mode": "transcribe", "language": "en", "sample_rate": 8000})
        assert ws.receive_json()["type"] == "ready"
        second = b"\0\0" * 8000
        for _ in range(int(limit) + 1):
            ws.send_bytes(second)
        event = ws.receive_json()
        while event["type"] == "transcript.partial":
            event = ws.receive_json()
        assert event["error"]["code"] == "audio_too_long" and f"{limit:g} seconds" in event["error"]["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4400


def test_stream_header_auth(client: TestClient) -> None:
    """Non-browser clients may send the key as a header (the test client sends the admin's)."""
    with client.websocket_connect(STREAM) as ws:
        ws.send_json({"type": "start", "mode": "transcribe"})
        assert ws.receive_json()["type"] == "ready"


@pytest.fixture(autouse=True)
def _no_session_left(client: TestClient) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 30
    while getattr(client.app.state, "voice_sessions", None) is not None and sessions_open(client):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "a voice session was left open"
        time.sleep(0.05)
