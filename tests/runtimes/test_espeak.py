"""eSpeak NG through the real espeak-ng program."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.media.audio import decode_audio, encode_audio
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.runtimes.base import TranscribeOptions
from kaset.runtimes.espeak import EspeakRuntime, words_per_minute
from kaset.runtimes.faster_whisper import FasterWhisperRuntime

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SENTENCE = "The farmer plants rice in the rainy season."


@pytest.fixture(scope="module")
def espeak(catalog: Catalog) -> Iterator[EspeakRuntime]:
    runtime = EspeakRuntime(catalog.resolve("espeak-ng"), None)
    runtime.load()
    yield runtime
    runtime.unload()


def speak(runtime: EspeakRuntime, text: str, voice: str | None = None, speed: float = 1.0) -> bytes:
    return b"".join(runtime.synthesize(text, voice, speed))


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / 22_050


def espeak_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if p.name() == "espeak-ng"]


def test_voices_start_with_the_default_and_leave_out_thai(espeak: EspeakRuntime) -> None:
    ids = [v.id for v in espeak.voices()]
    assert ids[0] == "en-us"
    assert {"en-gb", "es", "fr-fr", "de", "vi"} <= set(ids)
    assert not [i for i in ids if i == "th" or i.startswith("th-")]
    assert len(ids) == len(set(ids))
    assert espeak.sample_rate(None) == 22_050


@pytest.mark.parametrize(
    ("asked", "voice"),
    [(None, "en-us"), ("en", "en-us"), ("EN_US", "en-us"), ("fr", "fr-fr"), ("es", "es"), ("zh", "cmn")],
)
def test_voice_names_resolve(espeak: EspeakRuntime, asked: str | None, voice: str) -> None:
    assert espeak.resolve_voice(asked) == voice


def test_thai_is_refused_with_a_reason(espeak: EspeakRuntime) -> None:
    with pytest.raises(InvalidRequest) as err:
        espeak.synthesize("สวัสดี", "th", 1.0)
    assert "not offered" in err.value.message


def test_unknown_voice_lists_the_valid_ones(espeak: EspeakRuntime) -> None:
    with pytest.raises(InvalidRequest) as err:
        espeak.synthesize(SENTENCE, "alloy", 1.0)
    assert err.value.param == "voice"
    assert "en-us" in err.value.message and "fr-fr" in err.value.message


def test_speech_decodes_and_is_intelligible(
    espeak: EspeakRuntime, installed: Callable[[str], tuple[ModelSpec, Path]]
) -> None:
    chunks = list(espeak.synthesize(SENTENCE, None, 1.0))
    assert len(chunks) > 1  # streamed as espeak-ng writes, not in one piece
    pcm = b"".join(chunks)
    audio, duration = decode_audio(encode_audio(pcm, 22_050, "wav"), max_seconds=60)
    assert duration == pytest.approx(seconds(pcm), abs=0.01)
    assert 1.5 < duration < 6.0
    spec, folder = installed("whisper-tiny.en")
    whisper = FasterWhisperRuntime(spec, folder)
    whisper.load()
    text = whisper.transcribe(audio, TranscribeOptions(language="en")).text.lower()
    # espeak-ng is robotic; Whisper still catches the content words.
    assert "rice" in text and "season" in text


def test_other_languages_speak(espeak: EspeakRuntime) -> None:
    assert seconds(speak(espeak, "El agricultor planta arroz en la temporada de lluvias.", "es")) > 1.5


def test_text_starting_with_a_dash_is_spoken_not_parsed(espeak: EspeakRuntime) -> None:
    assert seconds(speak(espeak, "--help me please")) > 0.5


def test_speed_changes_duration(espeak: EspeakRuntime) -> None:
    normal = seconds(speak(espeak, SENTENCE))
    assert seconds(speak(espeak, SENTENCE, speed=2.0)) < 0.7 * normal
    assert seconds(speak(espeak, SENTENCE, speed=0.5)) > 1.5 * normal


def test_words_per_minute_is_clamped_to_what_espeak_accepts() -> None:
    assert words_per_minute(1.0) == 175
    assert words_per_minute(0.25) == 80
    assert words_per_minute(4.0) == 450


def test_closing_the_stream_early_stops_espeak(espeak: EspeakRuntime) -> None:
    stream = espeak.synthesize("This is a long text to speak. " * 100, None, 1.0)
    next(iter(stream))
    assert espeak_children()
    stream.close()  # type: ignore[attr-defined]
    assert not espeak_children()


def test_a_hung_espeak_is_stopped(catalog: Catalog) -> None:
    spec = catalog.resolve("espeak-ng")
    spec = spec.model_copy(update={"params": {**spec.params, "timeout": 0.05}})
    runtime = EspeakRuntime(spec, None)
    runtime.load()
    stream = runtime.synthesize("This is a long text to speak. " * 300, None, 1.0)
    with pytest.raises(ModelUnavailable, match="did not finish"):
        for _ in stream:
            pass
    assert not espeak_children()
