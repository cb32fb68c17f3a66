"""The crop doctor with the real models: ImageNet gate + mango model, e5 + SmolLM2 advice,
Whisper for spoken questions and Piper for spoken answers."""

from __future__ import annotations

import io
import random
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jiwer
import numpy as np
import pytest
from PIL import Image

from kaset.errors import InvalidRequest
from kaset.knowledge.schema import load_entries
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.crop_doctor import Consultation, CropDoctor, speakable, spoken_part
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import SpeechService, not_caught
from kaset.pipelines.spoken_answer import spoken_answer
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router
from tests.fixtures import thai_speech as thai
from tests.fixtures.images import mango_like_leaf

module_loop = pytest.mark.asyncio(loop_scope="module")
DARKNET_DATA = Path("/usr/share/darknet/data")
MODELS = ("efficientnet-lite0", "mango-disease", "e5-small", "smollm2-135m", "whisper-tiny.en", "whisper-base",
          "piper-joe")


def darknet_dog() -> np.ndarray:
    path = DARKNET_DATA / "dog.jpg"
    if not path.exists():
        pytest.skip("needs darknet's sample photos: apt-get install darknet")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
async def doctor(catalog: Catalog, installed: Callable[[str], object], models_dir: Path) -> AsyncIterator[CropDoctor]:
    for model in MODELS:
        installed(model)
    manager = ModelManager(catalog, ModelRepository(models_dir))
    speech = SpeechService(Router(manager), manager, max_audio_seconds=60)
    yield CropDoctor(DiagnosisService(manager, load_entries(), rng=random.Random(1)), AdviceService(manager), speech)
    await manager.close()


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


@module_loop
async def test_mango_photo_and_typed_english_question(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(image=mango_like_leaf(seed=2, spots=25),
                                                question="What should I do about these spots on the leaves?"))
    diagnosis, advice = verdict.diagnosis, verdict.advice
    assert verdict.language == "en" and diagnosis is not None and advice is not None
    assert diagnosis.status == "diagnosed" and diagnosis.crop == "mango" and diagnosis.entry is not None
    # Grounded on the diagnosis: the diagnosed disease is the advice's first source.
    assert advice.hits[0].entry.id == diagnosis.entry.id
    assert verdict.answer == advice.answer and advice.language == "en"
    assert verdict.audio is not None and verdict.audio.audio[:4] == b"RIFF" and verdict.notices == []
    assert verdict.audio.seconds == pytest.approx(_wav_seconds(verdict.audio.audio), abs=0.01)
    assert verdict.audio.seconds > 3  # more than a word or two: the summary and what to do now
    timings = verdict.timings
    assert timings.transcribe_ms is None and timings.diagnose_ms and timings.advice_ms and timings.speech_ms
    assert timings.total_ms >= max(timings.diagnose_ms, timings.advice_ms, timings.speech_ms)


@module_loop
async def test_the_spoken_answer_says_the_answer(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(image=mango_like_leaf(seed=2, spots=25), language="en"))
    assert verdict.question is None and verdict.advice is not None and verdict.audio is not None
    heard = await doctor.speech.hear(verdict.audio.audio, language="en")
    said = spoken_answer(verdict.diagnosis, verdict.advice, "en")
    assert verdict.diagnosis is not None and verdict.diagnosis.entry is not None
    assert verdict.diagnosis.entry.en.name in said and len(said) < len(verdict.answer) / 3
    error = jiwer.wer(_words(said), _words(heard.text))
    assert error < 0.35, (verdict.answer, heard.text, error)


@module_loop
async def test_not_a_plant_is_an_answer_in_thai(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(image=darknet_dog(), language="th"))
    diagnosis = verdict.diagnosis
    assert diagnosis is not None and diagnosis.status == "not_a_plant" and diagnosis.retake_tips
    assert verdict.advice is None
    assert "ไม่ใช่พืช" in verdict.answer and diagnosis.retake_tips[0] in verdict.answer
    # No Thai voice offline: text only, and a notice that says so.
    assert verdict.audio is None and [n.code for n in verdict.notices] == ["no_voice"]


@module_loop
async def test_not_a_plant_in_english_is_spoken(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(image=darknet_dog()))  # auto, no question: Thai
    assert verdict.language == "th" and verdict.diagnosis is not None
    verdict = await doctor.consult(Consultation(image=darknet_dog(), language="en"))
    assert verdict.diagnosis is not None and verdict.diagnosis.status == "not_a_plant"
    assert "not a plant" in verdict.answer and "For a better photo:" in verdict.answer
    assert verdict.audio is not None and verdict.notices == []


@module_loop
async def test_typed_thai_question(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(question="ใบข้าวมีแผลรูปตา สีเทา ควรทำอย่างไร"))
    assert verdict.language == "th" and verdict.diagnosis is None and verdict.advice is not None
    assert verdict.advice.hits[0].entry.id == "rice-blast"
    assert verdict.answer == verdict.advice.answer
    assert sum(1 for c in verdict.answer if "\u0e00" <= c <= "\u0e7f") > len(verdict.answer) / 3
    assert verdict.audio is None and verdict.notices[0].code == "no_voice"
    assert verdict.timings.diagnose_ms is None and verdict.timings.speech_ms is None


@module_loop
async def test_spoken_english_question_with_a_photo(doctor: CropDoctor) -> None:
    question = "How do I treat the black spots on my mango leaves?"
    spoken = await doctor.speech.speak(question, language="en", fmt="wav")
    verdict = await doctor.consult(Consultation(image=mango_like_leaf(seed=2, spots=25), audio=spoken.audio))
    assert verdict.transcript is not None and verdict.heard is not None
    assert jiwer.wer(_words(question), _words(verdict.transcript)) < 0.3, verdict.transcript
    # "auto": the diagnosis started in Thai, the transcript said English: all of it is English.
    assert verdict.language == "en" and verdict.diagnosis is not None and verdict.diagnosis.language == "en"
    assert verdict.diagnosis.status == "diagnosed" and verdict.advice is not None
    assert verdict.advice.language == "en" and verdict.audio is not None
    assert verdict.timings.transcribe_ms and verdict.timings.diagnose_ms


@module_loop
async def test_spoken_question_alone(doctor: CropDoctor) -> None:
    spoken = await doctor.speech.speak("My rice leaves have grey diamond shaped spots. What should I do?",
                                       language="en", fmt="mp3")
    verdict = await doctor.consult(Consultation(audio=spoken.audio, crop="rice", speak=False))
    assert verdict.language == "en" and verdict.advice is not None
    assert verdict.advice.hits[0].entry.crop == "rice" and verdict.audio is None and verdict.notices == []


@module_loop
async def test_missing_input(doctor: CropDoctor) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await doctor.consult(Consultation(question="   "))
    assert raised.value.code == "missing_input"


def test_speakable_drops_bullets_and_ends_lines() -> None:
    text = "Anthracnose: a fungus.\n\nWhat to do now:\n- Prune infected twigs\n- Spray copper"
    assert speakable(text) == "Anthracnose: a fungus. What to do now: Prune infected twigs. Spray copper."
    assert speakable("สิ่งที่ควรทำตอนนี้:\n- ตัดแต่งกิ่ง") == "สิ่งที่ควรทำตอนนี้: ตัดแต่งกิ่ง"
    long = text + "\n\nIf you spray:\n- copper: at bud break\n\nTo prevent it:\n- Prune"
    assert spoken_part(long, "en") == speakable(text) + " Spraying, safety and prevention are in the written answer."
    assert spoken_part("Short answer. Two sentences.", "en") == "Short answer. Two sentences."


# --- spoken Thai the doctor did not understand -------------------------------------------------------


@module_loop
async def test_garbled_thai_speech_gets_say_it_again_and_no_advice(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(audio=thai.wav_bytes(thai.garbled_set()["shuffled"]),
                                                language="auto", speak=False))
    assert verdict.understood is False and verdict.advice is None and verdict.diagnosis is None
    assert verdict.transcript  # shown to the farmer, so they see what was heard
    # In "auto" the language is whatever Whisper heard when it is English or Thai, else Thai.
    assert verdict.answer == not_caught(verdict.language)
    assert not_caught("th") == "ขออภัย ฟังไม่ชัด กรุณาพูดอีกครั้ง ช้าลงเล็กน้อยและใกล้ไมโครโฟน"
    assert [n.code for n in verdict.notices] == ["not_understood"]
    assert verdict.timings.advice_ms is None  # nothing was asked of the advisor


@module_loop
async def test_garbled_speech_with_a_photo_still_diagnoses_the_photo(doctor: CropDoctor) -> None:
    verdict = await doctor.consult(Consultation(image=mango_like_leaf(seed=2, spots=25),
                                                audio=thai.wav_bytes(thai.garbled_set()["babble"]), language="th"))
    assert verdict.understood is False and verdict.diagnosis is not None and verdict.diagnosis.status == "diagnosed"
    assert verdict.advice is not None and verdict.advice.hits[0].entry.id == verdict.diagnosis.entry.id  # type: ignore[union-attr]
    assert verdict.answer.startswith("ขออภัย ฟังไม่ชัด") and verdict.advice.answer in verdict.answer
    assert "not_understood" in [n.code for n in verdict.notices]


@module_loop
async def test_clear_thai_speech_that_is_no_farm_question_is_not_advised(doctor: CropDoctor) -> None:
    # Clear speech passes Whisper's check; the advisor then matches "the time is ..." to nothing.
    phrase = thai.thai_speech_set()[2]
    verdict = await doctor.consult(Consultation(audio=phrase.wav(), language="th", speak=False))
    assert verdict.heard is not None and verdict.transcript
    assert verdict.understood is False and verdict.advice is None
    assert [n.code for n in verdict.notices] == ["not_understood"]


@module_loop
async def test_a_clear_spoken_question_is_understood(doctor: CropDoctor) -> None:
    spoken = await doctor.speech.speak("My rice leaves have grey diamond shaped spots. What should I do?",
                                       language="en", fmt="wav")
    verdict = await doctor.consult(Consultation(audio=spoken.audio, speak=False))
    assert verdict.understood is True and verdict.advice is not None and verdict.advice.understood
    assert "not_understood" not in [n.code for n in verdict.notices]
