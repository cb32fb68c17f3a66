"""The voice assistant's answering with the real models: e5 + curated knowledge (advice),
SmolLM2 (assistant), Piper (English speech). There is no Thai voice and no Thai speech to
record a question with, so the Thai path is tested from the heard text on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kaset.errors import InvalidRequest
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.speech import SpeechService, Spoken, doubt, not_caught
from kaset.pipelines.voice import (
    Answered,
    Audio,
    Delta,
    Notice,
    SentenceCutter,
    VoiceAssistant,
    VoiceEvent,
    collect,
    speakable,
)
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router
from tests.fixtures import thai_speech as thai

THAI_QUESTION = "ใบข้าวมีจุดสีน้ำตาลรูปตา ทำอย่างไรดี"


@pytest.fixture(scope="module")
async def assistant(catalog: Catalog, installed: Callable[[str], object],
                    models_dir: Path) -> AsyncIterator[VoiceAssistant]:
    for model in ("e5-small", "smollm2-135m", "piper-joe", "whisper-tiny.en"):
        installed(model)
    manager = ModelManager(catalog, ModelRepository(models_dir))
    router = Router(manager)
    yield VoiceAssistant(SpeechService(router, manager, 60), AdviceService(manager), router)
    await manager.close()


async def _events(assistant: VoiceAssistant, question: str, **options: object) -> list[tuple[float, VoiceEvent]]:
    started = time.perf_counter()
    return [(time.perf_counter() - started, e) async for e in assistant.answer(question, **options)]  # type: ignore[arg-type]


def test_sentence_cutter_cuts_as_text_arrives() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("Water the rice") == []
    assert cutter.feed(" every morning. Then") == ["Water the rice every morning."]
    # "Yes." alone is too short to speak: it waits for the next sentence.
    assert cutter.feed(" check it. Yes. It grows well.\nDone") == ["Then check it.", "Yes. It grows well."]
    assert cutter.feed(" now 3.5 cm") == []  # a decimal point is no sentence end
    assert cutter.finish() == ["Done now 3.5 cm"]
    assert cutter.finish() == []


def test_sentence_cutter_may_end_the_first_piece_at_a_clause() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("Yes, water") == []  # a clause too short to speak alone
    assert cutter.feed(" the rice every morning, and then, later") == ["Yes, water the rice every morning,"]
    # Only the first piece: the rest wait for whole sentences.
    assert cutter.feed(" check it, twice. Done") == ["and then, later check it, twice."]
    assert SentenceCutter(first_clause_chars=0).feed("Water the rice every morning, then") == []


def test_speakable_drops_markdown() -> None:
    assert speakable("- **Spray** the `leaves` now.") == "Spray the leaves now."
    assert speakable("2. Keep seed ## clean") == "Keep seed clean"


@pytest.mark.asyncio(loop_scope="module")
async def test_thai_advice_is_text_with_a_no_voice_notice(assistant: VoiceAssistant) -> None:
    events = [e for _, e in await _events(assistant, THAI_QUESTION, mode="advice")]
    assert isinstance(events[0], Notice) and events[0].code == "no_voice"
    assert not any(isinstance(e, Audio) for e in events)
    deltas = [e for e in events if isinstance(e, Delta)]
    answered = events[-1]
    assert isinstance(answered, Answered)
    assert answered.language == "th" and answered.path == "curated" and answered.advice is not None
    assert answered.advice.hits[0].entry.crop == "rice"
    thai = sum("\u0e00" <= c <= "\u0e7f" for c in answered.answer)
    assert deltas and thai > 0.5 * len(answered.answer.replace(" ", ""))
    # Every word of the advisor's answer is in the sentences, in order.
    assert "".join(answered.answer.split()) == "".join(answered.advice.answer.split())
    assert answered.sentences == [d.text for d in deltas] and answered.first_audio_s is None


@pytest.mark.asyncio(loop_scope="module")
async def test_thai_in_assistant_mode_is_answered_by_the_advisor(assistant: VoiceAssistant) -> None:
    events = [e for _, e in await _events(assistant, THAI_QUESTION, mode="assistant")]
    codes = [e.code for e in events if isinstance(e, Notice)]
    assert codes == ["assistant_language", "no_voice"]
    answered = events[-1]
    assert isinstance(answered, Answered) and answered.language == "th" and answered.path == "curated"


@pytest.mark.asyncio(loop_scope="module")
async def test_assistant_speaks_the_first_sentence_before_the_llm_finishes(
        assistant: VoiceAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    # When synthesis *starts*, not when its audio arrives: how long Piper takes next to a running
    # LLM on 2 cores is the benchmark's business (bench/voice_assistant.py), the order is ours.
    started = time.perf_counter()
    speak_started: list[float] = []
    speak = assistant.speech.speak

    async def timed_speak(text: str, **options: Any) -> Spoken:
        speak_started.append(time.perf_counter() - started)
        return await speak(text, **options)

    monkeypatch.setattr(assistant.speech, "speak", timed_speak)
    timed = [(time.perf_counter() - started, e) async for e in
             assistant.answer("Why do farmers flood their rice fields?", mode="assistant", language="en")]
    deltas = [(t, e) for t, e in timed if isinstance(e, Delta)]
    audios = [(t, e) for t, e in timed if isinstance(e, Audio)]
    answered = timed[-1][1]
    assert isinstance(answered, Answered) and answered.path == "assistant" and answered.model == "smollm2-135m"
    assert [e.index for _, e in audios] == [e.index for _, e in deltas]
    assert audios[0][1].spoken.audio[:4] == b"RIFF" and audios[0][1].spoken.model == "piper-joe"
    assert len(speak_started) == len(deltas)
    if len(deltas) > 1:
        # Pipelined: the first sentence goes to the synthesizer before the model has written the last.
        assert speak_started[0] < deltas[-1][0]
    assert answered.first_text_s is not None and answered.first_audio_s is not None
    assert answered.first_text_s <= answered.first_audio_s


@pytest.mark.asyncio(loop_scope="module")
async def test_collect_joins_speech_into_one_file(assistant: VoiceAssistant) -> None:
    reply = await collect(assistant.answer("My mango fruit has black spots", mode="advice", language="en",
                                           fmt="pcm"), "wav")
    assert reply.audio is not None and reply.audio[:4] == b"RIFF" and reply.speech_model == "piper-joe"
    assert reply.answered.advice is not None and reply.answered.advice.hits[0].entry.crop == "mango"
    assert reply.audio_seconds > 1


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_mode_and_language(assistant: VoiceAssistant) -> None:
    with pytest.raises(InvalidRequest, match="Unknown mode"):
        await _events(assistant, "hello there", mode="poetry")
    with pytest.raises(InvalidRequest, match="Thai or English"):
        await _events(assistant, "我的水稻叶子上有褐色斑点", mode="advice")


# --- spoken questions the assistant did not understand ---------------------------------------------



@pytest.mark.asyncio(loop_scope="module")
async def test_garbled_thai_speech_is_answered_with_say_it_again(assistant: VoiceAssistant,
                                                                  installed: Callable[[str], object]) -> None:
    installed("whisper-base")
    heard = await assistant.speech.hear(thai.wav_bytes(thai.garbled_set()["babble"]), language="th")
    assert heard.text and doubt(heard) is not None
    for mode in ("advice", "assistant"):
        events = [e for _, e in await _events(assistant, heard.text, mode=mode, language="th", heard=heard)]
        answered = events[-1]
        assert isinstance(answered, Answered) and answered.understood is False and answered.advice is None
        assert [e.text for e in events if isinstance(e, Delta)] == [not_caught("th")]
        assert next(e.code for e in events if isinstance(e, Notice)) == "not_understood"
        assert answered.model is None  # no model was asked anything


@pytest.mark.asyncio(loop_scope="module")
async def test_clear_speech_the_advisor_cannot_match_is_not_advised(assistant: VoiceAssistant,
                                                                    installed: Callable[[str], object]) -> None:
    installed("whisper-base")
    heard = await assistant.speech.hear(thai.thai_speech_set()[2].wav(), language="th")  # "the time is ..."
    assert doubt(heard) is None
    events = [e for _, e in await _events(assistant, heard.text, mode="advice", language="th", heard=heard)]
    answered = events[-1]
    assert isinstance(answered, Answered) and answered.understood is False and answered.answer == not_caught("th")
    assert "not_understood" in [n.code for n in answered.notices]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_clear_spoken_question_is_answered(assistant: VoiceAssistant) -> None:
    spoken = await assistant.speech.speak("My mango fruit has black spots. What should I do?", language="en")
    heard = await assistant.speech.hear(spoken.audio, language="en")
    events = [e for _, e in await _events(assistant, heard.text, mode="advice", language="en", speak=False,
                                          heard=heard)]
    answered = events[-1]
    assert isinstance(answered, Answered) and answered.understood and answered.advice is not None
    assert "not_understood" not in [n.code for n in answered.notices]
