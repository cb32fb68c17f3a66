"""End to end: the real `kaset serve` process on a free port, driven by the official openai SDK."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jiwer
import numpy as np
import openai
import pytest

from kaset.registry.catalog import Catalog

pytestmark = pytest.mark.e2e

KEY = "ksk-e2e-test-key-0123456789abcdef0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
           installed: Callable[[str], object], models_dir: Path) -> Iterator[str]:
    for spec in catalog:
        if spec.default and spec.needs_install:
            installed(spec.id)
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("e2e-data")
    env = {**os.environ, "KASET_DATA_DIR": str(data_dir), "KASET_MODELS_DIR": str(models_dir),
           "KASET_BOOTSTRAP_KEY": KEY}
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kaset", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"server exited early:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            else:
                pytest.fail(f"server not ready in 120 s:\n{log_path.read_text()}")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_list_models_includes_default_pack_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"whisper-tiny.en", "whisper-1", "piper-joe", "tts-1", "smollm2-135m", "e5-small"} <= ids


def test_chat_plain(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hello in one short sentence."}],
        max_tokens=24, temperature=0, seed=1,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_chat_streamed_matches_plain(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name two colours."}]
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                           max_tokens=20, temperature=0, seed=7)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                            max_tokens=20, temperature=0, seed=7, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2
    assert "".join(pieces) == plain.choices[0].message.content


def test_embeddings_cross_lingual(client: openai.OpenAI) -> None:
    texts = ["Farmers grow rice in flooded paddy fields.", "ชาวนาปลูกข้าวในนาที่มีน้ำขัง",
             "The stock market fell sharply today."]
    result = client.embeddings.create(model="e5-small", input=texts)
    vectors = np.array([d.embedding for d in result.data])
    en_th = vectors[0] @ vectors[1]
    assert en_th > vectors[0] @ vectors[2]
    assert en_th > vectors[1] @ vectors[2]
    b64 = client.embeddings.create(model="text-embedding-3-small", input="rice", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(str(b64.data[0].embedding)), dtype="<f4")
    assert decoded.shape == (384,) and abs(float(np.linalg.norm(decoded)) - 1) < 1e-3


def test_speech_transcription_round_trip(client: openai.OpenAI) -> None:
    sentence = "The farmer checks the young rice plants every morning before the sun gets hot."
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="wav")
    wav = audio.read()
    assert wav[:4] == b"RIFF"
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav, "audio/wav"))
    error = jiwer.wer(_normalise(sentence), _normalise(text.text))
    assert error < 0.15, (sentence, text.text, error)


def test_transcription_formats(client: openai.OpenAI) -> None:
    mp3 = client.audio.speech.create(model="piper-joe", voice="joe", input="Water the seedlings at dawn.",
                                     response_format="mp3").read()
    srt = client.audio.transcriptions.create(model="whisper-tiny.en", file=("a.mp3", mp3, "audio/mpeg"),
                                             response_format="srt")
    assert "-->" in str(srt)
    verbose = client.audio.transcriptions.create(model="whisper-tiny.en", file=("a.mp3", mp3, "audio/mpeg"),
                                                 response_format="verbose_json")
    assert verbose.duration > 0.5 and verbose.segments


def test_translate_en_es(server: str) -> None:
    response = httpx.post(f"{server}/v1/translate", headers={"Authorization": f"Bearer {KEY}"},
                          json={"text": ["The farmer plants rice."], "source": "en", "target": "es"})
    assert response.status_code == 200, response.text
    assert "arroz" in response.json()["translations"][0].lower()


def test_errors_in_openai_envelope(client: openai.OpenAI, server: str) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in not_found.value.message
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="ksk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def _normalise(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).strip()
