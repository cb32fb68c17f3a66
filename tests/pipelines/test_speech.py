"""Choosing a voice by language with the real speech models installed (Piper, eSpeak NG), and
hearing real recorded Thai speech with Whisper base: clear phrases are trusted, garbled ones,
noise and silence are not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kaset.errors import InvalidRequest
from kaset.pipelines.speech import SpeechService
from kaset.pipelines.speech import doubt as speech_doubt
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router
from kaset.runtimes.faster_whisper import clean_text
from tests.fixtures import thai_speech as thai


@pytest.fixture
async def speech(catalog: Catalog, installed: Callable[[str], object], models_dir: Path
                 ) -> AsyncIterator[SpeechService]:
    installed("piper-joe")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield SpeechService(Router(manager), manager, 60)
    await manager.close()


async def test_a_multilingual_engine_is_chosen_once_its_voices_are_listed_without_loading_it(
        speech: SpeechService) -> None:
    # The catalog says only "multilingual": which languages eSpeak NG speaks is the engine's to say.
    assert speech.voice_model_for("vi") is None
    await speech.list_voices()
    vietnamese = speech.voice_model_for("vi")
    assert vietnamese is not None and vietnamese.id == "espeak-ng"
    english = speech.voice_model_for("en")
    assert english is not None and english.id == "piper-joe"  # named in the catalog: preferred
    assert speech.voice_model_for("th") is None  # eSpeak's Thai is excluded, Piper speaks English
    assert speech.manager.loaded() == []


async def test_voices_are_read_from_the_files_of_an_unloaded_model(speech: SpeechService) -> None:
    spec = speech.manager.resolve("piper-joe")
    voices = await speech.manager.voices(spec)
    assert [(v.id, v.language) for v in voices] == [("joe", "en")]
    assert speech.manager.known_voices(spec) == voices and speech.manager.loaded() == []


# --- Thai speech: how well it is heard, and whether the server admits it did not ------------------

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
async def hearing(catalog: Catalog, installed: Callable[[str], object], models_dir: Path
                  ) -> AsyncIterator[SpeechService]:
    installed("whisper-base")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield SpeechService(Router(manager), manager, 60)
    await manager.close()


def test_the_thai_cer_normalisation_writes_numbers_one_way() -> None:
    assert thai.normalise("10 นาฬิกา, ๓๐ นาที.") == thai.normalise("สิบ นาฬิกา สามสิบ นาที") == "สิบนาฬิกาสามสิบนาที"
    assert thai.normalise("3C") == "สามc"  # a garbled number stays an error
    assert thai.cer(["สิบ นาฬิกา"], ["10 นาฬิกา"]) == 0.0
    first = thai.thai_speech_set()[0]
    assert first.reference == thai.thai_speech_set()[0].reference and first.seconds > 2  # deterministic


@module_loop
async def test_clear_thai_speech_is_heard_and_trusted(hearing: SpeechService) -> None:
    phrases = thai.thai_speech_set()[:10]
    heard = [await hearing.hear(u.wav(), language="th") for u in phrases]
    assert all(h.model == "whisper-base" and h.avg_logprob is not None for h in heard)
    doubts = [(h.text, speech_doubt(h)) for h in heard if speech_doubt(h) is not None]
    assert not doubts, doubts
    # whisper-base on this set: about 19% through the gateway (bench/thai_asr.py); a regression guard.
    error = thai.cer([u.reference for u in phrases], [h.text for h in heard])
    assert error < 0.3, [(u.reference, h.text) for u, h in zip(phrases, heard, strict=True)]


@module_loop
@pytest.mark.parametrize("kind", ["reversed-2", "shuffled", "babble", "babble-2"])
async def test_garbled_thai_is_not_trusted(hearing: SpeechService, kind: str) -> None:
    for language in ("th", None):
        heard = await hearing.hear(thai.wav_bytes(thai.garbled_set()[kind]), language=language)
        assert speech_doubt(heard) is not None, (language, heard)


@module_loop
async def test_noise_and_silence_are_not_speech(hearing: SpeechService) -> None:
    # Usually no text at all (400 no_speech); Whisper's temperature fallback samples, so now and
    # then it writes something for noise (seen in CI; for the quiet hiss once "โอเค โอเค ..."):
    # then it must be doubted, never trusted.
    for samples in (thai.noise(level=0.02, seed=9), thai.noise(), thai.silence()):
        try:
            heard = await hearing.hear(thai.wav_bytes(samples), language="th")
        except InvalidRequest as refused:
            assert refused.code == "no_speech"
        else:
            assert speech_doubt(heard) is not None, heard


def test_clean_text_collapses_repeats_and_thai_digits() -> None:
    assert clean_text("อ่ะ มามาสมวันกำสักษาสาสาสาสา  ๑๒ นาที") == "อ่ะ มามาสมวันกำสักษาสา 12 นาที"
    assert clean_text("1000000 baht") == "1000000 baht"
