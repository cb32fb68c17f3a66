"""The AI4Thai provider adapter (VAJA speech, Partii transcription, Xiaofan en→th translation).

AI4Thai cannot be reached from this machine: these tests run against a local server that
implements the documented API shapes, as third-party clients use them
(tests/fixtures/fake_ai4thai.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from kaset.errors import (
    InvalidRequest,
    ModelUnavailable,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from kaset.registry.catalog import ModelSpec
from kaset.runtimes import runtime_class
from kaset.runtimes.ai4thai import AI4ThaiRuntime, split_for_speech, split_for_url
from kaset.runtimes.base import TASK_CONTRACTS, TranscribeOptions
from tests.fixtures.fake_ai4thai import MAX_TTS_CHARS, SECONDS_PER_CHAR, THAI_TRANSCRIPT, ai4thai_app
from tests.fixtures.fake_providers import FakeServer, provider_runtimes, serve

KEY = "ai4thai-test-key-0123456789-secret"
ENV = "KASET_TEST_AI4THAI_KEY"
THAI = "ชาวนาปลูกข้าวในฤดูฝน"
# Thai separates sentences with spaces (and writes none inside these): 20 sentences, ~900 characters.
SENTENCES = ("ชาวนาปลูกข้าวในฤดูฝนและเก็บเกี่ยวในฤดูหนาว", "ชาวนาต้องดูแลน้ำในนาข้าวทุกวัน",
             "ชาวนาใส่ปุ๋ยเมื่อต้นข้าวเริ่มแตกกอ", "ชาวนาระวังเพลี้ยกระโดดสีน้ำตาลในแปลงนา")
LONG_THAI = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(24))


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with serve(ai4thai_app(KEY)) as fake:
        yield fake


@pytest.fixture
def make(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AI4ThaiRuntime]]:
    monkeypatch.setenv(ENV, KEY)
    with provider_runtimes("ai4thai", AI4ThaiRuntime, ["synthesize", "transcribe", "translate"]) as build:
        def make_runtime(mode: str = "", **params: Any) -> AI4ThaiRuntime:
            base_url = f"{server.base_url}/{mode}" if mode else server.base_url
            return build(f"ai4thai-{mode or 'ok'}", {"base_url": base_url, "api_key_env": ENV, **params})

        yield make_runtime


def _seconds(pcm: bytes, rate: int = 16_000) -> float:
    return len(pcm) / 2 / rate


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.5 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)


def test_registered_for_the_three_tasks() -> None:
    cls = runtime_class("ai4thai")
    assert cls is AI4ThaiRuntime
    assert all(issubclass(cls, TASK_CONTRACTS[task]) for task in ("synthesize", "transcribe", "translate"))


# --- speech (VAJA) ----------------------------------------------------------------------------


def test_speech_fetches_the_audio_url_with_the_key(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    runtime = make()
    assert runtime.sample_rate(None) == 16_000 and runtime.voices()[0].id == "noina"
    pcm = b"".join(runtime.synthesize(THAI, None, 1.0))
    # The fake's 22.05 kHz WAV, decoded and resampled to 16 kHz s16le: as long, and not silent.
    assert _seconds(pcm) == pytest.approx(SECONDS_PER_CHAR * len(THAI), abs=0.02)
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 5000
    post, get = server.requests[-2:]
    assert post["path"] == "/vaja" and post["body"] == {"text": THAI, "speaker": "noina"}
    assert post["headers"]["Apikey"] == KEY
    assert get["path"].startswith("/audio/") and get["headers"]["Apikey"] == KEY


def test_speech_legacy_vaja9_request(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    runtime = make(tts_path="/vaja9/synth_audiovisual")
    assert [v.id for v in runtime.voices()] == ["0", "1", "2", "3"]
    pcm = b"".join(runtime.synthesize(THAI, "1", 1.0))
    assert _seconds(pcm) == pytest.approx(SECONDS_PER_CHAR * len(THAI), abs=0.02)
    post = server.requests[-2]
    assert post["path"] == "/vaja9/synth_audiovisual"
    assert post["body"] == {"input_text": THAI, "speaker": 1, "phrase_break": 0, "audiovisual": 0}


def test_speech_as_audio_bytes_or_a_nested_url(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    direct = b"".join(make("direct").synthesize(THAI, None, 1.0))
    assert _seconds(direct) == pytest.approx(SECONDS_PER_CHAR * len(THAI), abs=0.02)
    assert server.requests[-1]["path"] == "/direct/vaja"  # no second call
    nested = b"".join(make("v2").synthesize(THAI, None, 1.0))
    assert len(nested) == len(direct)


def test_audio_on_another_host_is_fetched_without_the_key(make: Callable[..., AI4ThaiRuntime],
                                                         server: FakeServer) -> None:
    pcm = b"".join(make("foreign").synthesize(THAI, None, 1.0))
    assert pcm
    fetch = server.requests[-1]
    assert fetch["path"].startswith("/public/") and fetch["headers"]["Host"].startswith("localhost:")
    assert "Apikey" not in fetch["headers"]


def test_long_text_is_spoken_a_sentence_group_at_a_time(make: Callable[..., AI4ThaiRuntime],
                                                        server: FakeServer) -> None:
    runtime = make()
    before = len(server.requests)
    chunks = list(runtime.synthesize(LONG_THAI, None, 1.0))
    posts = [r["body"]["text"] for r in server.requests[before:] if r["path"] == "/vaja"]
    assert len(chunks) == len(posts) >= math.ceil(len(LONG_THAI) / 200)
    assert all(len(text) <= 200 for text in posts)  # the default tts_max_chars, under the fake's limit
    assert " ".join(posts) == LONG_THAI  # cut only at the spaces between sentences
    assert all(text.startswith("ชาวนา") for text in posts)
    assert _seconds(b"".join(chunks)) == pytest.approx(SECONDS_PER_CHAR * (len(LONG_THAI) - len(posts) + 1), abs=0.1)
    assert MAX_TTS_CHARS > 200


def test_splitting_without_spaces_cuts_between_words() -> None:
    text = "ชาวนาปลูกข้าวในฤดูฝน" * 20  # 400 characters, no space
    pieces = split_for_speech(text, 100)
    assert len(pieces) >= 4 and all(len(p) <= 100 for p in pieces) and "".join(pieces) == text
    # Cut between words: no piece ends inside "ชาวนา" ... "ฤดูฝน".
    assert all(p.endswith(("ชาวนา", "ปลูก", "ข้าว", "ใน", "ฤดู", "ฝน", "ฤดูฝน")) for p in pieces)
    assert split_for_speech("  สั้น\nมาก  ", 100) == ["สั้น มาก"]
    english = "One. Two is here! " * 10
    assert all(len(p) <= 40 for p in split_for_url(english, 40))
    assert " ".join(split_for_url(english, 40)) == english.strip()


def test_speech_request_checks(make: Callable[..., AI4ThaiRuntime]) -> None:
    runtime = make(voices=["noina", "poom"], voice_aliases=["alloy"])
    assert runtime.resolve_voice("alloy") == "noina" and runtime.resolve_voice("POOM") == "poom"
    with pytest.raises(InvalidRequest, match="no voice 'nobody'") as caught:
        runtime.synthesize(THAI, "nobody", 1.0)
    assert caught.value.param == "voice"
    with pytest.raises(InvalidRequest, match="empty") as caught:
        runtime.synthesize("  \n ", None, 1.0)
    assert caught.value.param == "input"
    with pytest.raises(InvalidRequest, match="one speed"):
        runtime.synthesize(THAI, None, 1.5)


# --- transcription (Partii) -----------------------------------------------------------------


def test_transcription_sends_a_16k_mono_wav(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    result = make().transcribe(_tone(1.5), TranscribeOptions(language="th"))
    assert result.text == THAI_TRANSCRIPT and result.language == "th"
    assert result.duration == pytest.approx(1.5)
    assert [(s.start, s.end, s.text) for s in result.segments] == [(0.0, pytest.approx(1.5), THAI_TRANSCRIPT)]
    sent = server.requests[-1]
    assert sent["path"] == "/partii-webapi" and sent["headers"]["Apikey"] == KEY
    assert sent["headers"]["Content-Type"].startswith("multipart/form-data")
    assert sent["body"]["wav"] == {"rate": 16_000, "channels": 1, "width": 2, "frames": 24_000}
    assert sent["body"]["fields"] == {"outputlevel": "--uttlevel", "outputformat": "--txt"}
    assert make("v2").transcribe(_tone(0.5), TranscribeOptions()).text == THAI_TRANSCRIPT  # {"data": ...}


def test_transcription_request_checks(make: Callable[..., AI4ThaiRuntime]) -> None:
    runtime = make()
    with pytest.raises(InvalidRequest, match="Thai only") as caught:
        runtime.transcribe(_tone(0.5), TranscribeOptions(language="en"))
    assert caught.value.param == "language"
    with pytest.raises(InvalidRequest, match="cannot translate"):
        runtime.transcribe(_tone(0.5), TranscribeOptions(task="translate"))
    with pytest.raises(InvalidRequest, match="empty"):
        runtime.transcribe(np.zeros(0, dtype=np.float32), TranscribeOptions())


# --- translation (Xiaofan) --------------------------------------------------------------------


def test_translation_round_trip(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    runtime = make()
    assert runtime.pairs() == [("en", "th")]
    before = len(server.requests)
    texts = ["The farmer plants rice.", "   ", "Rice & water: 50%? yes/no"]
    assert runtime.translate(texts, "en", "th") == ["ชาวนาปลูกข้าว", "   ", "[th] Rice & water: 50%? yes/no"]
    sent = server.requests[before:]
    assert len(sent) == 2  # the blank text is not sent
    paths = sorted(r["path"] for r in sent)
    assert paths == ["/xiaofan-en-th/Rice%20%26%20water%3A%2050%25%3F%20yes%2Fno",
                     "/xiaofan-en-th/The%20farmer%20plants%20rice."]
    assert all(r["headers"]["Apikey"] == KEY for r in sent)
    assert make("v2").translate(["Rice needs water."], "EN", "th") == ["ข้าวต้องการน้ำ"]  # {"output": ...}


def test_long_translation_is_cut_at_sentence_ends(make: Callable[..., AI4ThaiRuntime], server: FakeServer) -> None:
    runtime = make(translate_max_chars=40)
    before = len(server.requests)
    text = "The farmer plants rice. Rice needs water. The farmer plants rice."
    assert runtime.translate([text], "en", "th") == ["ชาวนาปลูกข้าว ข้าวต้องการน้ำ ชาวนาปลูกข้าว"]
    assert len(server.requests) - before == 3


def test_translation_pairs_other_than_en_th_are_refused(make: Callable[..., AI4ThaiRuntime]) -> None:
    runtime = make()
    with pytest.raises(InvalidRequest, match="English to Thai only") as caught:
        runtime.translate(["ข้าว"], "th", "en")
    assert caught.value.param == "source" and caught.value.status_code == 400
    with pytest.raises(InvalidRequest, match="not en→fr") as caught:
        runtime.translate(["rice"], "en", "fr")
    assert caught.value.param == "target"


# --- errors and the key -------------------------------------------------------------------------


def _each_task(runtime: AI4ThaiRuntime) -> list[Callable[[], object]]:
    return [lambda: b"".join(runtime.synthesize(THAI, None, 1.0)),
            lambda: runtime.transcribe(_tone(0.3), TranscribeOptions()),
            lambda: runtime.translate(["rice"], "en", "th")]


def test_wrong_key_is_an_auth_failure(make: Callable[..., AI4ThaiRuntime], monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-ai4thai-key-topsecret"
    monkeypatch.setenv(ENV, wrong)
    runtime = make()
    for call in _each_task(runtime):
        with pytest.raises(UpstreamAuthFailed) as caught:
            call()
        assert caught.value.status_code == 503 and "API key" in caught.value.message
        assert wrong not in caught.value.message
    assert wrong not in caplog.text


def test_429_is_rate_limited_with_retry_after(make: Callable[..., AI4ThaiRuntime]) -> None:
    for call in _each_task(make("rate-limited")):
        with pytest.raises(UpstreamRateLimited) as caught:
            call()
        assert caught.value.status_code == 429 and caught.value.retry_after == 7
        assert caught.value.headers == {"Retry-After": "7"}


def test_500_is_an_upstream_error_without_the_key(make: Callable[..., AI4ThaiRuntime],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for call in _each_task(make("broken")):
        with pytest.raises(UpstreamError) as caught:
            call()
        # The fake's message echoes the key: it is scrubbed from what reaches the client and the log.
        assert caught.value.status_code == 502 and "HTTP 500" in caught.value.message
        assert "[redacted]" in caught.value.message and KEY not in caught.value.message
    assert "[redacted]" in caplog.text and KEY not in caplog.text


def test_a_200_reply_that_says_error_is_an_upstream_error(make: Callable[..., AI4ThaiRuntime]) -> None:
    for call in _each_task(make("soft-error")):
        with pytest.raises(UpstreamError, match="service temporarily unavailable") as caught:
            call()
        assert caught.value.status_code == 502


def test_timeout_is_504(make: Callable[..., AI4ThaiRuntime]) -> None:
    runtime = make("slow", timeout_s=0.5)
    for call in _each_task(runtime):
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout) as caught:
            call()
        assert caught.value.status_code == 504 and time.perf_counter() - started < 2.5


def test_the_key_travels_in_the_header_only(make: Callable[..., AI4ThaiRuntime], server: FakeServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    runtime = make()
    before = len(server.requests)
    for call in _each_task(runtime):
        call()
    sent = server.requests[before:]
    assert len(sent) == 4 and all(r["headers"].get("Apikey") == KEY for r in sent)  # VAJA, its audio, Partii, Xiaofan
    assert all(KEY not in r["path"] for r in server.requests)
    assert KEY not in caplog.text


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def runtime(**params: Any) -> AI4ThaiRuntime:
        spec = ModelSpec.model_validate({"id": "th", "tasks": ["translate"], "runtime": "ai4thai", "license": "x",
                                         "source": {"kind": "builtin"}, "params": params})
        return AI4ThaiRuntime(spec, None)

    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ModelUnavailable, match="needs an API key"):
        runtime().load()
    with pytest.raises(ModelUnavailable, match="do not put an API key"):
        runtime(api_key="inline", api_key_env=ENV).load()
    with pytest.raises(ModelUnavailable, match=f"{ENV}.*not set"):
        runtime(api_key_env=ENV).load()
    with pytest.raises(ModelUnavailable, match="tts_request"):
        runtime(api_key_env=ENV, tts_request="xml").load()
    with pytest.raises(ModelUnavailable, match="not loaded"):
        runtime(api_key_env=ENV).translate(["rice"], "en", "th")
    assert runtime().base_url == "https://api.aiforthai.in.th"
