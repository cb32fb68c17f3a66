"""ULCA/Bhashini pipelines with the real models: speech → translation → speech (Piper English →
Whisper → Apertium en→es → eSpeak NG Spanish), text chains, Kaset's own tasks, and chains that are
refused before anything runs."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from kaset.errors import InvalidRequest
from kaset.media.audio import decode_audio
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.describe import DescribeService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import SpeechService
from kaset.pipelines.ulca import Inputs, Limits, Pipeline, Task
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router
from tests.fixtures.images import jpeg, photo

module_loop = pytest.mark.asyncio(loop_scope="module")
LIMITS = Limits(max_text_chars=10_000, max_speech_chars=500, max_upload_bytes=2_000_000, max_image_pixels=40_000_000)


@pytest.fixture(scope="module")
async def pipeline(installed: Callable[[str], object], models_dir: Path) -> AsyncIterator[Pipeline]:
    for model in ("whisper-tiny.en", "piper-joe", "smollm2-135m", "e5-small", "efficientnet-lite0"):
        installed(model)
    manager = ModelManager(Catalog.load(), ModelRepository(models_dir))
    router = Router(manager)
    advisor = AdviceService(manager)
    yield Pipeline(speech=SpeechService(router, manager, 60), router=router, manager=manager, advisor=advisor,
                   diagnoser=DiagnosisService(manager, advisor.entries), describer=DescribeService(manager),
                   limits=LIMITS)
    await manager.close()


def task(kind: str, **config: object) -> Task:
    return Task(type=kind, config=dict(config))


def lang(source: str, target: str | None = None) -> dict[str, str]:
    return {"sourceLanguage": source, **({"targetLanguage": target} if target else {})}


async def english_speech(pipeline: Pipeline, text: str) -> bytes:
    spoken = await pipeline.speech.speak(text, language="en", fmt="wav")
    assert spoken.model == "piper-joe"
    return spoken.audio


@module_loop
async def test_speech_to_translation_to_speech(pipeline: Pipeline) -> None:
    audio = await english_speech(pipeline, "The farmer plants rice.")
    results, total_ms = await pipeline.run(
        [task("asr", language=lang("en")), task("translation", language=lang("en", "es")),
         task("tts", language=lang("es"))],
        Inputs(audio=[audio]))
    asr, translation, tts = results
    transcript = asr.output[0]["source"] if asr.output else ""
    assert "farmer" in transcript.lower() and "rice" in transcript.lower()
    assert asr.config["serviceId"] == "whisper-tiny.en"
    assert translation.output is not None and translation.output[0]["source"] == transcript
    spanish = translation.output[0]["target"]
    assert "arroz" in spanish.lower() and translation.config["serviceId"] == "apertium"
    assert tts.output is None and tts.audio is not None and tts.config["serviceId"] == "espeak-ng"
    assert tts.config["voice"] == "es" and tts.config["audioFormat"] == "wav"
    wav = base64.b64decode(tts.audio[0]["audioContent"])
    samples, seconds = decode_audio(wav, 60)
    assert wav[:4] == b"RIFF" and seconds > 0.5 and float(np.abs(samples).max()) > 0.05
    # The Spanish speech, heard back by the multilingual Whisper, has the translation's words
    # (eSpeak is robotic and Whisper base small: "la rof de plantas de la mor" for "El granjero
    # planta arroz", so one shared word stem is the bar).
    heard = await pipeline.speech.hear(wav, language="es", model="whisper-base")
    stems = {w[:5] for w in spanish.lower().replace(".", "").split() if len(w) >= 5}
    assert heard.language == "es" and any(stem in heard.text.lower() for stem in stems), (spanish, heard.text)
    assert all(r.ms > 0 for r in results) and total_ms >= sum(r.ms for r in results) * 0.9


@module_loop
async def test_text_translation_keeps_each_input(pipeline: Pipeline) -> None:
    results, _ms = await pipeline.run([task("translation", language=lang("en", "ca"))],
                                      Inputs(texts=["The dog sleeps.", "Water is good."]))
    (translation,) = results
    assert translation.output is not None and [o["source"] for o in translation.output] == [
        "The dog sleeps.", "Water is good."]
    assert "gos" in translation.output[0]["target"].lower() and "aigua" in translation.output[1]["target"].lower()


@module_loop
async def test_kaset_tasks_feed_each_other(pipeline: Pipeline) -> None:
    """describe (photo → English) → translation (en → es); llm; advice."""
    results, _ms = await pipeline.run([task("describe"), task("translation", language=lang("en", "es"))],
                                      Inputs(images=[jpeg(photo("coffee"))]))
    describe, translation = results
    assert describe.output is not None and "espresso" in describe.output[0]["target"]
    assert describe.output[0]["source"] is None
    assert translation.output is not None and translation.output[0]["source"] == describe.output[0]["target"]
    (llm,), _ms = await pipeline.run([task("llm", maxTokens=20, temperature=0.0)], Inputs(texts=["Say hello."]))
    assert llm.config["serviceId"] == "smollm2-135m" and llm.output and llm.output[0]["target"]
    (advice,), _ms = await pipeline.run([task("advice", crop="rice")],
                                        Inputs(texts=["Rice leaves have grey eye-shaped spots. What should I do?"]))
    assert advice.output and advice.output[0]["citations"] and advice.output[0]["path"] in ("llm", "curated")
    assert advice.config["serviceId"] == ("smollm2-135m" if advice.output[0]["path"] == "llm" else "e5-small")


@module_loop
async def test_diagnose_says_when_the_photo_is_no_plant(pipeline: Pipeline) -> None:
    (diagnosis,), _ms = await pipeline.run([task("diagnose", crop="mango", language=lang("en"))],
                                           Inputs(images=[jpeg(photo("rocket"))]))
    assert diagnosis.output and diagnosis.output[0]["status"] == "not_a_plant"
    assert diagnosis.output[0]["target"] and diagnosis.config["serviceId"] == "efficientnet-lite0"


async def refused(pipeline: Pipeline, tasks: list[Task], inputs: Inputs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        await pipeline.run(tasks, inputs)
    return caught.value


@module_loop
async def test_bad_chains_are_refused_before_anything_runs(pipeline: Pipeline) -> None:
    audio = await english_speech(pipeline, "Hello.")
    error = await refused(pipeline, [task("tts", language=lang("en")), task("tts", language=lang("en"))],
                          Inputs(texts=["hi"]))
    assert error.param == "pipelineTasks[1]" and "pipelineTasks[1] (tts): it takes text" in error.message
    error = await refused(pipeline, [task("asr", language=lang("en"))], Inputs(texts=["hi"]))
    assert error.code == "missing_input" and "inputData.audio" in error.message
    error = await refused(pipeline, [task("translation", language=lang("en", "fr"))], Inputs(texts=["x"]))
    assert error.code == "unsupported_language_pair" and "en→es" in error.message
    error = await refused(pipeline, [task("translation", language=lang("en", "th"))], Inputs(texts=["x"]))
    assert error.param == "pipelineTasks[0].config.language" and "cannot translate en→th" in error.message
    error = await refused(pipeline, [task("asr", language=lang("en")), task("translation", language=lang("es", "en"))],
                          Inputs(audio=[audio]))
    assert error.param == "pipelineTasks[1].config.language.sourceLanguage" and "'en'" in error.message
    error = await refused(pipeline, [task("translation", language=lang("en", "es")), task("llm")],
                          Inputs(texts=["The dog."]))
    assert "pipelineTasks[1] (llm)" in error.message and "Translate it first" in error.message
    error = await refused(pipeline, [task("tts", language=lang("th"))], Inputs(texts=["สวัสดี"]))
    assert error.code == "no_voice" and "no voice for 'th'" in error.message
    error = await refused(pipeline, [task("translation", language=lang("en", "es")), task("describe")],
                          Inputs(texts=["x"]))
    assert "needs a photo" in error.message
    error = await refused(pipeline, [task("asr", serviceId="piper-joe")], Inputs(audio=[audio]))
    assert error.param == "pipelineTasks[0].config.serviceId" and "not transcribe" in error.message
    error = await refused(pipeline, [task("tts", language=lang("en"), voice="nobody")], Inputs(texts=["hi"]))
    assert "no voice 'nobody'" in error.message
    error = await refused(pipeline, [task("tts", language=lang("en"), audioFormat="midi")], Inputs(texts=["hi"]))
    assert "audioFormat 'midi'" in error.message
    error = await refused(pipeline, [task("translation")], Inputs(texts=["hi"]))
    assert "targetLanguage" in error.message
