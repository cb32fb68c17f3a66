"""Chat with audio, as OpenAI's audio models and speaches do: input_audio parts are heard by
Whisper, and with modalities ["text", "audio"] the reply is spoken by Piper. The `echo` chat
model answers with the (transcribed) question, so what was heard is checked word by word."""

from __future__ import annotations

import base64
import io
import json
import time
import wave
from typing import Any

import jiwer
import openai
import pytest
from fastapi.testclient import TestClient

from tests.api.test_usage_metrics import logged, rid
from tests.fixtures.audio import silence_wav, wav_bytes
from tests.fixtures.gateway import error_of

QUESTION = "The farmer waters the rice field every morning."
TWO_SENTENCES = "Rice needs plenty of water in the first month. Weed the field before the rains."


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@pytest.fixture(scope="module")
def spoken_question(client: TestClient) -> bytes:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": QUESTION, "response_format": "wav"})
    assert response.status_code == 200, response.text
    return response.content


def _audio_part(data: bytes, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def _heard(client: TestClient, audio: bytes, name: str = "a.wav") -> str:
    response = client.post("/v1/audio/transcriptions", files={"file": (name, audio)}, data={"model": "whisper-1"})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def test_input_audio_is_heard(client: TestClient, spoken_question: bytes) -> None:
    request_id = rid("chat-audio")
    response = client.post("/v1/chat/completions", headers={"x-request-id": request_id}, json={
        "model": "echo", "messages": [{"role": "user", "content": [_audio_part(spoken_question)]}]})
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert jiwer.wer(_words(QUESTION), _words(message["content"])) < 0.2, message
    assert message["audio"] is None
    row = logged(client, [request_id])[request_id]
    assert row["audio_seconds"] == pytest.approx(_wav_seconds(spoken_question), abs=0.05)


def test_text_and_audio_parts_keep_their_order(client: TestClient, spoken_question: bytes) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "transcription_model": "whisper-tiny.en", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Before."}, _audio_part(spoken_question), {"type": "text", "text": "After."}]}]})
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    lines = content.split("\n")
    assert lines[0] == "Before." and lines[-1] == "After." and "rice" in lines[1].lower()


def test_spoken_reply(client: TestClient, spoken_question: bytes) -> None:
    request_id = rid("chat-spoken")
    response = client.post("/v1/chat/completions", headers={"x-request-id": request_id}, json={
        "model": "echo", "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
        "messages": [{"role": "user", "content": [_audio_part(spoken_question)]}]})
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    audio = message["audio"]
    assert message["content"] is None and set(audio) == {"id", "data", "expires_at", "transcript"}
    assert audio["id"].startswith("audio_") and audio["expires_at"] > time.time() + 3000
    wav = base64.b64decode(audio["data"])
    assert wav[:4] == b"RIFF"
    assert jiwer.wer(_words(audio["transcript"]), _words(_heard(client, wav))) < 0.3
    row = logged(client, [request_id])[request_id]
    heard_and_said = _wav_seconds(spoken_question) + _wav_seconds(wav)
    assert row["audio_seconds"] == pytest.approx(heard_and_said, abs=0.1)


def test_spoken_reply_is_remembered_by_its_id(client: TestClient) -> None:
    first = client.post("/v1/chat/completions", json={
        "model": "echo", "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "mp3"},
        "messages": [{"role": "user", "content": "Plant the seedlings in rows."}]}).json()
    audio = first["choices"][0]["message"]["audio"]
    assert base64.b64decode(audio["data"])[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    history = [{"role": "user", "content": "Plant the seedlings in rows."},
               {"role": "assistant", "audio": {"id": audio["id"]}}, {"role": "user", "content": "Why?"}]
    again = client.post("/v1/chat/completions", json={"model": "echo", "messages": history})
    assert again.status_code == 200, again.text
    # The echo model counts every message's words: the remembered transcript was in the prompt.
    assert again.json()["usage"]["prompt_tokens"] == 5 + len(audio["transcript"].split()) + 1
    history[1]["audio"] = {"id": "audio_unknown"}
    gone = client.post("/v1/chat/completions", json={"model": "echo", "messages": history})
    assert gone.status_code == 400 and error_of(gone)["code"] == "audio_not_found"
    assert error_of(gone)["param"] == "messages[1].audio"


def _events(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_streamed_spoken_reply(client: TestClient) -> None:
    events = _events(client, {
        "model": "echo", "stream": True, "stream_options": {"include_usage": True},
        "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"},
        "messages": [{"role": "user", "content": TWO_SENTENCES}]})
    assert "error" not in events[-1], events[-1]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0]["role"] == "assistant"
    transcript = "".join(d["audio"]["transcript"] for d in deltas if "transcript" in d.get("audio", {}))
    assert transcript == TWO_SENTENCES and not any(d.get("content") for d in deltas)
    data = [d["audio"] for d in deltas if "data" in d.get("audio", {})]
    assert len(data) == 2, "one audio delta per sentence"
    assert {a["id"] for a in data} == {d["audio"]["id"] for d in deltas if "audio" in d}
    # The finish chunk comes after the last audio, the usage chunk last.
    finishes = [i for i, e in enumerate(events) if e["choices"] and e["choices"][0]["finish_reason"]]
    last_audio = max(i for i, e in enumerate(events) if e["choices"] and "data" in
                     e["choices"][0]["delta"].get("audio", {}))
    assert finishes == [len(events) - 2] and finishes[0] > last_audio and events[-1]["usage"]["completion_tokens"]
    pcm = b"".join(base64.b64decode(a["data"]) for a in data)
    seconds = len(pcm) / 2 / 24_000  # OpenAI's pcm16: 24 kHz
    assert 3 < seconds < 12
    assert jiwer.wer(_words(TWO_SENTENCES), _words(_heard(client, wav_bytes(pcm, 24_000)))) < 0.25


def test_thai_reply_has_no_voice(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
        "messages": [{"role": "user", "content": "ข้าวต้องการน้ำมากแค่ไหน"}]})
    assert response.status_code == 503 and error_of(response)["code"] == "no_voice"
    assert "th" in error_of(response)["message"]


@pytest.mark.parametrize("body,status,param,code", [
    ({"modalities": ["text", "audio"]}, 400, "audio", None),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}, "stream": True}, 400,
     "audio.format", None),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "ogg"}}, 422, None, None),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}, "speech_model": "echo"}, 400,
     "model", None),
])
def test_bad_audio_output_requests(client: TestClient, body: dict[str, Any], status: int, param: str | None,
                                   code: str | None) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": "Hello there, farmer."}], **body})
    assert response.status_code == status, response.text
    error = error_of(response)
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("part,status,param,words", [
    ({"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunk").decode(),
                                             "format": "wav"}}, 400, "messages[0].content[1]", "decode"),
    ({"type": "input_audio", "input_audio": {"data": base64.b64encode(b"plain text, not audio").decode(),
                                             "format": "wav"}}, 415, "messages[0].content[1]", "audio format"),
    ({"type": "input_audio", "input_audio": {"data": "%%% not base64", "format": "wav"}}, 400,
     "messages[0].content[1].input_audio.data", "base64"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "aiff"}}, 400,
     "messages[0].content[1].input_audio.format", "aiff"),
    ({"type": "input_audio"}, 400, "messages[0].content[1]", "input_audio.data"),
])
def test_bad_audio_parts_name_the_part(client: TestClient, part: dict[str, Any], status: int, param: str,
                                       words: str) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": "Listen:"}, part]}]})
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param and words in error["message"], error


def test_silence_is_no_speech(client: TestClient) -> None:
    silence = silence_wav(1.0)
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": [_audio_part(silence)]}]})
    assert response.status_code == 400 and error_of(response)["code"] == "no_speech"
    assert error_of(response)["param"] == "messages[0].content[0]"


@pytest.mark.parametrize("model,status", [("smollm2-135m", 400), ("no-such-model", 404)])
def test_transcription_model_that_cannot_transcribe(client: TestClient, spoken_question: bytes, model: str,
                                                    status: int) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "transcription_model": model,
        "messages": [{"role": "user", "content": [_audio_part(spoken_question)]}]})
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == "transcription_model"
    assert error_of(response)["message"].startswith("transcription_model: ")


def test_input_audio_only_in_user_messages(client: TestClient, spoken_question: bytes) -> None:
    response = client.post("/v1/chat/completions", json={"model": "echo", "messages": [
        {"role": "assistant", "content": [_audio_part(spoken_question)]}, {"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and error_of(response)["param"] == "messages[0].content[0]"


def test_openai_sdk_audio_in_and_out(client: TestClient, spoken_question: bytes) -> None:
    """The official SDK over the in-process app (TestClient is an httpx.Client)."""
    key = client.headers["Authorization"].removeprefix("Bearer ")
    sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key, http_client=client, max_retries=0)
    reply = sdk.chat.completions.create(
        model="echo", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(spoken_question).decode(), "format": "wav"}}]}])
    message = reply.choices[0].message
    assert message.content is None and message.audio is not None
    assert jiwer.wer(_words(QUESTION), _words(message.audio.transcript)) < 0.2
    assert base64.b64decode(message.audio.data)[:4] == b"RIFF"
    stream = sdk.chat.completions.create(
        model="echo", modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, stream=True,
        messages=[{"role": "user", "content": TWO_SENTENCES}])
    chunks = [c for c in stream if c.choices]
    audio = [getattr(c.choices[0].delta, "audio", None) for c in chunks]
    assert "".join(getattr(a, "transcript", None) or "" for a in audio if a) == TWO_SENTENCES
    assert sum(1 for a in audio if a and getattr(a, "data", None)) == 2
    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model="echo", modalities=["text", "audio"], audio={"voice": "alloy",
                                    "format": "wav"}, messages=[{"role": "user", "content": "สวัสดีครับ"}])
    assert raised.value.status_code == 503 and raised.value.code == "no_voice"
