"""End to end: the real `kaset serve` process on a free port, driven by the official openai SDK."""

from __future__ import annotations

import base64

import httpx
import jiwer
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.e2e

from tests.e2e.conftest import KEY  # noqa: E402


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
