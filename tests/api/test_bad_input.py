"""Bad input gets a 4xx in the OpenAI error envelope, and the server keeps serving."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.audio import tone_wav


def _assert_envelope(response, status: int, *words: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]
    return error




def _transcribe(client: TestClient, data: bytes, name: str = "a.wav", **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/audio/transcriptions", files={"file": (name, data, "application/octet-stream")},
                       data={"model": "whisper-tiny.en", **fields})


def test_missing_key(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Authorization": ""})
    _assert_envelope(response, 401, "api key")


def test_wrong_key(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Authorization": "Bearer ksk-nope"})
    assert _assert_envelope(response, 401, "incorrect")["type"] == "authentication_error"


def test_malformed_authorization(client: TestClient) -> None:
    _assert_envelope(client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401, "bearer")


def test_empty_audio(client: TestClient) -> None:
    _assert_envelope(_transcribe(client, b""), 400, "empty")


def test_corrupt_audio(client: TestClient) -> None:
    good = tone_wav(1.0)
    # A RIFF/WAVE header followed by garbage where the format chunk should be.
    _assert_envelope(_transcribe(client, good[:12] + b"\xde\xad" * 40), 400, "decode")
    mp3ish = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8
    _assert_envelope(_transcribe(client, mp3ish, "a.mp3"), 400)


def test_unsupported_container(client: TestClient) -> None:
    _assert_envelope(_transcribe(client, b"%PDF-1.7 this is a document not audio" * 20, "doc.pdf"), 415,
                     "wav")


def test_audio_file_over_size_limit(client: TestClient) -> None:
    huge = tone_wav(70.0)  # > 2 MiB configured for the tests
    _assert_envelope(_transcribe(client, huge), 413)


def test_audio_over_duration_limit(client: TestClient) -> None:
    rate = 8000
    long_wav = tone_wav(61.0, rate)  # under the byte limit at 8 kHz, over the 60 s limit
    assert len(long_wav) < 2 * 1024 * 1024
    _assert_envelope(_transcribe(client, long_wav), 413, "60 s")


def test_speech_text_over_limit(client: TestClient) -> None:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "word " * 200, "voice": "alloy"})
    _assert_envelope(response, 400, "limit")


def test_speech_empty_text(client: TestClient) -> None:
    _assert_envelope(client.post("/v1/audio/speech", json={"model": "tts-1", "input": "  "}), 400, "empty")


def test_unknown_voice(client: TestClient) -> None:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hello", "voice": "darth"})
    _assert_envelope(response, 400, "darth")
    response = client.post("/v1/audio/speech",
                           json={"model": "tts-1", "input": "hello", "voice": "darth", "stream": True})
    _assert_envelope(response, 400, "darth")


def test_unsupported_language_pair(client: TestClient) -> None:
    response = client.post("/v1/translate", json={"text": "rice", "source": "en", "target": "th"})
    _assert_envelope(response, 400, "en", "th")


def test_unknown_model(client: TestClient) -> None:
    response = client.post("/v1/chat/completions",
                           json={"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]})
    assert _assert_envelope(response, 404, "gpt-17")["code"] == "model_not_found"
    _assert_envelope(_transcribe(client, tone_wav(0.5), model="nope"), 404)


def test_model_of_the_wrong_task(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "whisper-1", "input": "rice"})
    _assert_envelope(response, 400, "transcribe")


def test_malformed_json(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b'{"model": "echo", "messages": [',
                           headers={"Content-Type": "application/json"})
    assert _assert_envelope(response, 400, "json")["code"] == "invalid_json"


def test_wrong_content_type(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b"model=echo", headers={"Content-Type": "text/plain"})
    _assert_envelope(response, 415, "application/json")
    response = client.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
    _assert_envelope(response, 415, "multipart")


def test_missing_fields(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "echo"})
    assert _assert_envelope(response, 422, "messages")["param"] == "messages"


def test_out_of_range_parameter(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "echo", "temperature": 9,
                                                          "messages": [{"role": "user", "content": "hi"}]})
    _assert_envelope(response, 422, "temperature")


def test_empty_embedding_input(client: TestClient) -> None:
    _assert_envelope(client.post("/v1/embeddings", json={"model": "e5-small", "input": ""}), 400, "empty")
    _assert_envelope(client.post("/v1/embeddings", json={"model": "e5-small", "input": []}), 400, "empty")


def test_chat_text_over_limit(client: TestClient, api_settings) -> None:  # type: ignore[no-untyped-def]
    content = "x" * (api_settings.max_text_chars + 1)
    response = client.post("/v1/chat/completions",
                           json={"model": "echo", "messages": [{"role": "user", "content": content}]})
    _assert_envelope(response, 413, "characters")


def test_prompt_longer_than_context(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "rice field " * 3000}]})
    _assert_envelope(response, 400, "context")
    response = client.post("/v1/chat/completions", json={
        "model": "smollm2-135m", "stream": True, "messages": [{"role": "user", "content": "rice field " * 3000}]})
    _assert_envelope(response, 400, "context")


def test_unknown_route(client: TestClient) -> None:
    _assert_envelope(client.get("/v1/nothing-here"), 404, "/v1/nothing-here")


@pytest.mark.parametrize("round_", range(2))
def test_server_still_serves_after_bad_input(client: TestClient, round_: int) -> None:
    _transcribe(client, b"\x00" * 100)
    response = client.post("/v1/chat/completions",
                           json={"model": "echo", "messages": [{"role": "user", "content": "still alive"}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "still alive"
    ok = _transcribe(client, tone_wav(0.5))
    assert ok.status_code == 200, ok.text
