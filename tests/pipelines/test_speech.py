"""Choosing a voice by language with the real speech models installed (Piper, eSpeak NG)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kaset.pipelines.speech import SpeechService
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router


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
