"""The HTTP API with real models, in-process."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["models"].values()) == {"loaded"}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/health/live", headers={"Authorization": ""}).status_code == 200


def test_models_list_and_get(client: TestClient) -> None:
    data = client.get("/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["whisper-1"]["alias_of"] == "whisper-tiny.en"
    assert by_id["piper-joe"]["state"] == "loaded"
    assert client.get("/v1/models/tts-1").json()["alias_of"] == "piper-joe"


def test_gateway_headers(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", headers={"x-request-id": "abc123"},
                           json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.headers["x-request-id"] == "abc123"
    assert float(response.headers["x-kaset-overhead-ms"]) >= 0
    assert response.headers["x-kaset-model"] == "echo"


def test_chat_parameters(client: TestClient) -> None:
    body = {"model": "smollm2-135m", "messages": [{"role": "system", "content": "You are brief."},
                                                  {"role": "user", "content": "Count from one to twenty."}],
            "max_tokens": 5, "temperature": 0, "seed": 3}
    first = client.post("/v1/chat/completions", json=body).json()
    assert first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 5
    again = client.post("/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


def test_chat_text_parts(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": "part one"}]}]})
    assert response.json()["choices"][0]["message"]["content"] == "part one"


def test_chat_stream_sse(client: TestClient) -> None:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["usage"]["completion_tokens"] > 0
    finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finish[-1] in ("stop", "length")


def test_completions(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "Rice is a",
                                                    "max_tokens": 6, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={"model": "smollm2-135m", "prompt": "Rice is a",
                                                        "max_tokens": 6, "stream": True}) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2


def test_embeddings_float_and_base64(client: TestClient) -> None:
    floats = client.post("/v1/embeddings", json={"model": "e5-small", "input": ["rice", "ข้าว"]}).json()
    assert len(floats["data"]) == 2 and len(floats["data"][0]["embedding"]) == 384
    assert floats["usage"]["prompt_tokens"] > 0
    b64 = client.post("/v1/embeddings", json={"model": "e5-small", "input": "rice",
                                              "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)
    short = client.post("/v1/embeddings", json={"model": "e5-small", "input": "rice", "dimensions": 64}).json()
    assert len(short["data"][0]["embedding"]) == 64


@pytest.mark.parametrize("fmt,magic", [("wav", b"RIFF"), ("mp3", None), ("flac", b"fLaC"), ("opus", b"OggS"),
                                       ("pcm", None), ("aac", None)])
def test_speech_formats(client: TestClient, fmt: str, magic: bytes | None) -> None:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Rice needs water.",
                                                      "voice": "nova", "response_format": fmt})
    assert response.status_code == 200, response.text
    assert len(response.content) > 1000
    if magic:
        assert response.content.startswith(magic)


def test_speech_speed_changes_duration(client: TestClient) -> None:
    def pcm_seconds(speed: float) -> float:
        response = client.post("/v1/audio/speech", json={"model": "piper-joe", "input": "The rain came early.",
                                                         "response_format": "pcm", "speed": speed})
        return len(response.content) / 2 / 22050

    assert pcm_seconds(2.0) < pcm_seconds(1.0) * 0.75


def test_speech_streamed(client: TestClient) -> None:
    with client.stream("POST", "/v1/audio/speech", json={
        "model": "tts-1", "input": "First sentence. Second sentence. Third one.", "response_format": "pcm",
        "stream": True}) as response:
        chunks = list(response.iter_bytes())
    assert response.status_code == 200
    assert sum(len(c) for c in chunks) > 22050


def test_espeak_voice(client: TestClient) -> None:
    response = client.post("/v1/audio/speech", json={"model": "espeak-ng", "input": "Hola, buenos días.",
                                                     "voice": "es", "response_format": "wav"})
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"


def test_transcription_formats(client: TestClient) -> None:
    wav = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Water the rice field in the morning.",
                                                "response_format": "wav"}).content
    files = {"file": ("a.wav", wav, "audio/wav")}
    text = client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1",
                                                                      "response_format": "text"})
    assert "rice" in text.text.lower() and "morning" in text.text.lower()
    vtt = client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1",
                                                                     "response_format": "vtt"})
    assert vtt.text.startswith("WEBVTT")
    verbose = client.post("/v1/audio/transcriptions", files=files,
                          data={"model": "whisper-base", "response_format": "verbose_json", "language": "en",
                                "timestamp_granularities[]": "word"}).json()
    assert verbose["language"] == "en" and verbose["segments"] and verbose["words"]
    translated = client.post("/v1/audio/translations", files=files, data={"model": "whisper-1"})
    assert "rice" in translated.json()["text"].lower()


def test_translate_languages(client: TestClient) -> None:
    pairs = client.get("/v1/translate/languages").json()["pairs"]
    assert {"source": "en", "target": "es", "model": "apertium"} in pairs
    response = client.post("/v1/translate", json={"text": ["Good morning.", "The rice is green."],
                                                  "source": "en", "target": "es"})
    assert response.status_code == 200, response.text
    assert len(response.json()["translations"]) == 2


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/audio/transcriptions" in spec["paths"]


def test_advice_cites_entries(client: TestClient) -> None:
    response = client.post("/v1/advice", json={"question": "ใบมะม่วงมีผงสีขาวเหมือนแป้ง ช่อดอกร่วง",
                                               "crop": "mango"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "th" and body["path"] == "curated"
    assert body["citations"][0]["id"] == "mango-powdery-mildew"
    assert body["citations"][0]["sources"]
    english = client.post("/v1/advice", json={"question": "brown planthoppers at the base of my rice plants",
                                              "use_llm": True}).json()
    assert english["citations"][0]["id"] == "rice-brown-planthopper"
    assert english["llm_model"] == "smollm2-135m"
    assert (english["path"] == "llm") == (english["llm_rejected"] is None)


def test_advice_bad_input(client: TestClient) -> None:
    response = client.post("/v1/advice", json={"question": "Мой рис болеет"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_language"
    response = client.post("/v1/advice", json={"question": "spots", "crop": "banana"})
    assert response.status_code == 400 and "banana" in response.json()["error"]["message"]


def test_landing_page_needs_no_key(client: TestClient) -> None:
    response = client.get("/", headers={"Authorization": ""})
    assert response.status_code == 200 and "/docs" in response.text and "Kaset" in response.text
