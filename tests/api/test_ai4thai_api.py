"""Thai speech, transcription and translation through the gateway, served by AI4Thai models.

AI4Thai cannot be reached from this machine: the gateway's catalog folder (KASET_CATALOG_DIRS,
here `catalog_dirs`) declares AI4Thai models pointing at a local server that implements the
documented API shapes (tests/fixtures/fake_ai4thai.py), as docs/providers.md describes.
No installed model is needed: the gateway loads only these.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kaset.config import Settings
from kaset.media.audio import encode_audio
from tests.fixtures.audio import wav_bytes
from tests.fixtures.fake_ai4thai import SECONDS_PER_CHAR, THAI_TRANSCRIPT, ai4thai_app
from tests.fixtures.fake_providers import FakeServer, serve
from tests.fixtures.gateway import ready_client

KEY = "ai4thai-api-test-key-4242-secret"
ENV = "KASET_TEST_API_AI4THAI_KEY"
THAI = "ข้าวต้องการน้ำมากในฤดูร้อน"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with pytest.MonkeyPatch.context() as patch, serve(ai4thai_app(KEY)) as server:
        patch.setenv(ENV, KEY)
        yield server


@pytest.fixture(scope="module")
def gateway(fake: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("ai4thai-catalog")
    common = "license: proprietary, languages: [th, en], source: {kind: builtin}, max_concurrent: 4"
    (folder / "ai4thai.yaml").write_text(f"""
models:
  - {{id: thai-speech, tasks: [synthesize, transcribe], runtime: ai4thai, {common},
     params: {{base_url: "{fake.base_url}", api_key_env: {ENV}, voice_aliases: [alloy]}}}}
  - {{id: thai-translate, tasks: [translate], runtime: ai4thai, {common},
     params: {{base_url: "{fake.base_url}", api_key_env: {ENV}}}}}
  - {{id: thai-limited, tasks: [translate], runtime: ai4thai, {common},
     params: {{base_url: "{fake.base_url}/rate-limited", api_key_env: {ENV}}}}}
""", encoding="utf-8")
    settings = Settings(data_dir=tmp_path_factory.mktemp("ai4thai-data"), models_dir=tmp_path_factory.mktemp("models"),
                        catalog_dirs=[folder], models=["thai-speech", "thai-translate"], auth_enabled=False)
    with ready_client(settings) as client:
        yield client


def test_speech(gateway: TestClient) -> None:
    response = gateway.post("/v1/audio/speech", json={"model": "thai-speech", "input": THAI, "voice": "alloy",
                                                      "response_format": "wav"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-kaset-model"] == "thai-speech"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16_000, 1)
        assert wav.getnframes() / 16_000 == pytest.approx(SECONDS_PER_CHAR * len(THAI), abs=0.02)
    unknown = gateway.post("/v1/audio/speech", json={"model": "thai-speech", "input": THAI, "voice": "nobody"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"


def test_long_speech_streams_a_piece_at_a_time(gateway: TestClient, fake: FakeServer) -> None:
    text = " ".join([THAI] * 20)  # ~540 characters: three VAJA calls of at most 200
    before = len(fake.requests)
    with gateway.stream("POST", "/v1/audio/speech", json={"model": "thai-speech", "input": text,
                                                          "response_format": "pcm", "stream": True}) as response:
        assert response.status_code == 200
        pieces = [chunk for chunk in response.iter_bytes() if chunk]
    calls = [r["body"]["text"] for r in fake.requests[before:] if r["path"] == "/vaja"]
    assert len(calls) == 3 and " ".join(calls) == text
    seconds = len(b"".join(pieces)) / 2 / 16_000
    assert seconds == pytest.approx(SECONDS_PER_CHAR * (len(text) - 2), abs=0.1)


def test_transcription(gateway: TestClient, fake: FakeServer) -> None:
    # A 44.1 kHz stereo upload: the gateway decodes it, the runtime sends Partii 16 kHz mono.
    t = np.arange(44_100) / 44_100
    tone = (0.4 * np.sin(2 * math.pi * 330.0 * t) * 32767).astype("<i2")
    stereo = wav_bytes(np.repeat(tone, 2).tobytes(), 44_100, channels=2)
    response = gateway.post("/v1/audio/transcriptions",
                            data={"model": "thai-speech", "response_format": "verbose_json"},
                            files={"file": ("speech.wav", stereo, "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == THAI_TRANSCRIPT and body["language"] == "th" and body["duration"] == pytest.approx(1.0)
    received = fake.requests[-1]["body"]["wav"]
    assert (received["rate"], received["channels"], received["width"]) == (16_000, 1, 2)
    assert received["frames"] == pytest.approx(16_000, abs=16)
    english = gateway.post("/v1/audio/transcriptions", data={"model": "thai-speech", "language": "en"},
                           files={"file": ("a.wav", encode_audio(tone.tobytes(), 44_100, "wav"), "audio/wav")})
    assert english.status_code == 400 and english.json()["error"]["param"] == "language"


def test_translation(gateway: TestClient) -> None:
    response = gateway.post("/v1/translate", json={"model": "thai-translate", "source": "en", "target": "th",
                                                   "text": ["The farmer plants rice.", "Rice needs water."]})
    assert response.status_code == 200, response.text
    assert response.json()["translations"] == ["ชาวนาปลูกข้าว", "ข้าวต้องการน้ำ"]
    wrong = gateway.post("/v1/translate", json={"model": "thai-translate", "source": "th", "target": "en",
                                                "text": "ข้าว"})
    assert wrong.status_code == 400 and "English to Thai only" in wrong.json()["error"]["message"]


def test_provider_errors_reach_the_client_without_the_key(gateway: TestClient) -> None:
    limited = gateway.post("/v1/translate", json={"model": "thai-limited", "source": "en", "target": "th",
                                                  "text": "rice"})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "upstream_rate_limited"
    assert limited.headers["retry-after"] == "7" and KEY not in limited.text
