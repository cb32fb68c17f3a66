"""faster-whisper with the real whisper-tiny.en and whisper-base models, fed Piper speech."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.media.audio import decode_audio, encode_audio
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.base import TranscribeOptions
from kaset.runtimes.faster_whisper import FasterWhisperRuntime
from kaset.runtimes.piper import PiperRuntime

SENTENCE = "The farmer plants rice in the rainy season."

Installed = Callable[[str], tuple[ModelSpec, Path]]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def whisper(installed: Installed, model_id: str) -> Iterator[FasterWhisperRuntime]:
    spec, folder = installed(model_id)
    runtime = FasterWhisperRuntime(spec, folder)
    runtime.load()
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def tiny(installed: Installed) -> Iterator[FasterWhisperRuntime]:
    yield from whisper(installed, "whisper-tiny.en")


@pytest.fixture(scope="module")
def base(installed: Installed) -> Iterator[FasterWhisperRuntime]:
    yield from whisper(installed, "whisper-base")


@pytest.fixture(scope="module")
def speech(installed: Installed) -> np.ndarray:
    """SENTENCE spoken by Piper, as the 16 kHz float32 the API hands to a transcriber."""
    spec, folder = installed("piper-joe")
    piper = PiperRuntime(spec, folder)
    piper.load()
    pcm = b"".join(piper.synthesize(SENTENCE, None, 1.0))
    audio, _ = decode_audio(encode_audio(pcm, piper.sample_rate(None), "wav"), max_seconds=60)
    return audio


def test_tiny_transcribes_piper_speech(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    tiny.warmup()
    started = time.perf_counter()
    result = tiny.transcribe(speech, TranscribeOptions())
    elapsed = time.perf_counter() - started
    duration = speech.size / 16_000
    error = wer(SENTENCE, result.text)
    print(f"whisper-tiny.en: {result.text!r} WER {error:.2%} RTF {elapsed / duration:.3f}")
    assert error < 0.15
    assert result.language == "en"
    assert result.duration == pytest.approx(duration, abs=0.01)


def test_segments_are_numbered_from_zero_and_ordered(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    result = tiny.transcribe(speech, TranscribeOptions(language="en"))
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert result.segments and result.segments[0].tokens
    ends = [s.end for s in result.segments]
    assert ends == sorted(ends) and ends[-1] <= result.duration + 0.5
    assert result.text == "".join(s.text for s in result.segments).strip()
    assert all(s.words is None for s in result.segments)


def test_word_timestamps(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    result = tiny.transcribe(speech, TranscribeOptions(word_timestamps=True))
    words = [w for s in result.segments for w in (s.words or [])]
    assert normalise(" ".join(w.word for w in words)) == normalise(result.text)
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= result.duration + 0.5 for w in words)
    assert all(0.0 <= w.probability <= 1.0 for w in words)


def test_prompt_and_temperature_are_accepted(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    result = tiny.transcribe(speech, TranscribeOptions(prompt="Rice farming.", temperature=0.2))
    assert wer(SENTENCE, result.text) < 0.3


def test_silence_gives_no_text(tiny: FasterWhisperRuntime) -> None:
    result = tiny.transcribe(np.zeros(32_000, dtype=np.float32), TranscribeOptions())
    assert result.text == ""


def test_english_only_model_refuses_thai(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    with pytest.raises(InvalidRequest) as err:
        tiny.transcribe(speech, TranscribeOptions(language="th"))
    assert err.value.param == "language"
    assert "English only" in err.value.message and "whisper-base" in err.value.message


def test_english_only_model_refuses_translation(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    with pytest.raises(InvalidRequest) as err:
        tiny.transcribe(speech, TranscribeOptions(task="translate"))
    assert "English-only" in err.value.message


def test_language_code_is_case_insensitive(tiny: FasterWhisperRuntime, speech: np.ndarray) -> None:
    assert wer(SENTENCE, tiny.transcribe(speech, TranscribeOptions(language="EN")).text) < 0.15


def test_base_transcribes_piper_speech_and_detects_english(base: FasterWhisperRuntime, speech: np.ndarray) -> None:
    started = time.perf_counter()
    result = base.transcribe(speech, TranscribeOptions())
    elapsed = time.perf_counter() - started
    error = wer(SENTENCE, result.text)
    print(f"whisper-base: {result.text!r} WER {error:.2%} RTF {elapsed / (speech.size / 16_000):.3f}")
    assert error < 0.15
    assert result.language == "en"


def test_base_translates_into_english(base: FasterWhisperRuntime, speech: np.ndarray) -> None:
    result = base.transcribe(speech, TranscribeOptions(task="translate", language="en"))
    assert wer(SENTENCE, result.text) < 0.3


def test_base_knows_thai_but_not_made_up_codes(base: FasterWhisperRuntime, speech: np.ndarray) -> None:
    assert "th" in base.supported_languages()
    with pytest.raises(InvalidRequest) as err:
        base.transcribe(speech, TranscribeOptions(language="xx"))
    assert "th" in err.value.message  # lists the valid codes


def test_unloaded_model_is_unavailable(installed: Installed) -> None:
    spec, folder = installed("whisper-tiny.en")
    with pytest.raises(ModelUnavailable):
        FasterWhisperRuntime(spec, folder).transcribe(np.zeros(16_000, np.float32), TranscribeOptions())
