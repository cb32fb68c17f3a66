"""Piper with the real en_US-joe-medium voice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.piper import PiperRuntime

SENTENCE = "The farmer plants rice in the rainy season."
TWO_SENTENCES = "The farmer plants rice in the rainy season. The river is high in August."


@pytest.fixture(scope="module")
def piper(installed: Callable[[str], tuple[ModelSpec, Path]]) -> Iterator[PiperRuntime]:
    spec, folder = installed("piper-joe")
    runtime = PiperRuntime(spec, folder)
    runtime.load()
    runtime.warmup()
    yield runtime
    runtime.unload()


def seconds(pcm: bytes, rate: int = 22_050) -> float:
    return len(pcm) / 2 / rate


def test_offers_one_voice_speaking_english(piper: PiperRuntime) -> None:
    voices = piper.voices()
    assert [v.id for v in voices] == ["joe"]
    assert voices[0].language == "en"
    assert piper.sample_rate(None) == 22_050


@pytest.mark.parametrize("name", ["joe", "alloy", "nova", "Shimmer", None])
def test_openai_voice_names_are_the_same_voice(piper: PiperRuntime, name: str | None) -> None:
    assert piper.resolve_voice(name) == "joe"
    assert piper.sample_rate(name) == 22_050


def test_unknown_voice_is_refused_before_synthesis_starts(piper: PiperRuntime) -> None:
    with pytest.raises(InvalidRequest) as err:
        piper.synthesize(SENTENCE, "darth", 1.0)  # not iterated: the call itself refuses
    assert err.value.param == "voice"
    assert "joe" in err.value.message and "alloy" in err.value.message


def test_empty_text_and_bad_speed_are_refused(piper: PiperRuntime) -> None:
    with pytest.raises(InvalidRequest):
        piper.synthesize("   ", None, 1.0)
    with pytest.raises(InvalidRequest):
        piper.synthesize(SENTENCE, None, 5.0)


def test_yields_int16_pcm_one_chunk_per_sentence(piper: PiperRuntime) -> None:
    started = time.perf_counter()
    chunks = list(piper.synthesize(TWO_SENTENCES, "alloy", 1.0))
    elapsed = time.perf_counter() - started
    assert len(chunks) == 2
    assert all(len(c) % 2 == 0 and len(c) > 0 for c in chunks)
    pcm = b"".join(chunks)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert 3.0 < seconds(pcm) < 10.0
    assert np.abs(samples).max() > 10_000  # Piper normalises: real speech, not silence
    rtf = elapsed / seconds(pcm)
    print(f"piper RTF {rtf:.3f} ({seconds(pcm):.2f} s of speech in {elapsed:.3f} s)")
    assert rtf < 1.0


def test_speed_changes_duration(piper: PiperRuntime) -> None:
    normal = seconds(b"".join(piper.synthesize(SENTENCE, None, 1.0)))
    fast = seconds(b"".join(piper.synthesize(SENTENCE, None, 2.0)))
    slow = seconds(b"".join(piper.synthesize(SENTENCE, None, 0.5)))
    assert fast < 0.75 * normal
    assert slow > 1.5 * normal


def test_unloaded_runtime_says_so(installed: Callable[[str], tuple[ModelSpec, Path]]) -> None:
    spec, folder = installed("piper-joe")
    runtime = PiperRuntime(spec, folder)
    # Listing voices and their rate needs no loaded model.
    assert runtime.voices()[0].id == "joe"
    assert runtime.sample_rate("nova") == 22_050
    with pytest.raises(ModelUnavailable):
        list(runtime.synthesize(SENTENCE, None, 1.0))
