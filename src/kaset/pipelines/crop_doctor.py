"""The crop doctor: a photo and/or a spoken or typed question, in Thai or English, answered in one
call: diagnosis of the photo, grounded advice on the diagnosis and the question, and speech.

Steps that do not need each other run at the same time: the spoken question is transcribed
while the photo goes through the plant gate and the crop models. The diagnosis's texts (its
message, plan and retake tips) are written in the answer's language, which for a spoken
question in "auto" mode is only known once the transcript is in. The diagnosis therefore starts
with the likely language (the one asked for, else the typed question's, else Thai, the farmers'
language) and is run again in English in the rare case the speech turns out English; the
classifiers' work is small next to transcription, so the overlap still wins.

The advice is grounded on the diagnosis (its label and crop boost the matching curated entry)
and on the question; with a photo and no question the doctor asks the advisor how to treat what
it found. A photo the plant gate refuses is an answer, not an error: the answer says what the
photo looks like and how to take a better one. Thai answers have no offline voice: the answer is
then text only, with a `no_voice` notice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from kaset import usage
from kaset.errors import InvalidRequest
from kaset.language import Language
from kaset.pipelines.advice import Advice, AdviceQuery, AdviceService, detect_language
from kaset.pipelines.diagnose import Diagnosis, DiagnosisService
from kaset.pipelines.diagnosis_text import THAI_CROPS
from kaset.pipelines.speech import Caller, Heard, NoVoice, SpeechService, Spoken, doubt, not_caught
from kaset.pipelines.spoken_answer import speakable as speakable
from kaset.pipelines.spoken_answer import spoken_answer
from kaset.pipelines.spoken_answer import spoken_part as spoken_part
from kaset.pipelines.vocabulary import crop_hearing_prompt

T = TypeVar("T")

LanguageChoice = Literal["en", "th", "auto"]
_RETAKE_LEAD: dict[Language, str] = {"en": "For a better photo:", "th": "คำแนะนำในการถ่ายภาพใหม่:"}


@dataclass
class Notice:
    code: str
    message: str


@dataclass
class Consultation:
    """What the farmer sent. At least one of image, audio and question."""

    image: np.ndarray | None = None
    audio: bytes | None = None
    question: str | None = None
    language: LanguageChoice = "auto"
    crop: str | None = None
    speak: bool = True
    voice: str | None = None
    fmt: str = "wav"
    compare: bool = False
    # Let the local LLM rephrase the curated advice. Off by default: the 135M model takes about as
    # long as the rest of the call and its rewrite of a long plan is usually rejected.
    rephrase: bool = False
    caller: Caller | None = None


@dataclass
class Timings:
    transcribe_ms: float | None = None
    diagnose_ms: float | None = None
    advice_ms: float | None = None
    speech_ms: float | None = None
    total_ms: float = 0.0


@dataclass
class Verdict:
    """The crop doctor's answer."""

    language: Language
    question: str | None
    transcript: str | None
    heard: Heard | None
    diagnosis: Diagnosis | None
    advice: Advice | None
    answer: str
    audio: Spoken | None
    notices: list[Notice] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    # False when the spoken question was not understood (Whisper's own signals doubted it, or the
    # advisor matched it to nothing): nothing in the answer comes from that speech, and the
    # notices hold `not_understood`. True when there was no spoken question.
    understood: bool = True


async def _timed(step: Awaitable[T]) -> tuple[T, float]:
    began = time.perf_counter()
    result = await step
    return result, (time.perf_counter() - began) * 1000


def _language_of(text: str) -> Language:
    return detect_language(text)


def default_question(diagnosis: Diagnosis, language: Language) -> str:
    """The question a photo alone asks: how to deal with what was found."""
    entry = diagnosis.entry
    name = entry.content(language).name if entry is not None else (diagnosis.label or "")
    crop = diagnosis.crop or ""
    if language == "th":
        return f"{name} ของ{THAI_CROPS.get(crop, crop)} ควรจัดการอย่างไร"
    return f"How do I manage {name} on my {crop}?"


class CropDoctor:
    def __init__(self, diagnoser: DiagnosisService, advisor: AdviceService, speech: SpeechService) -> None:
        self.diagnoser = diagnoser
        self.advisor = advisor
        self.speech = speech

    async def consult(self, request: Consultation) -> Verdict:
        began = time.perf_counter()
        question = (request.question or "").strip() or None
        if request.image is None and request.audio is None and question is None:
            raise InvalidRequest(
                "Send a photo ('image'), a spoken question ('audio') or a typed question ('question'). "
                "ส่งภาพถ่าย เสียงคำถาม หรือพิมพ์คำถามอย่างน้อยหนึ่งอย่าง", param="image", code="missing_input")
        timings = Timings()
        # The language the diagnosis is written in before the transcript can say otherwise.
        likely: Language = (request.language if request.language != "auto"
                            else _language_of(question) if question else "th")

        heard_task = asyncio.create_task(self._hear(request)) if request.audio is not None else None
        diagnose_task = (asyncio.create_task(self._diagnose(request, likely))
                         if request.image is not None else None)
        try:
            heard: Heard | None = None
            if heard_task is not None:
                heard, timings.transcribe_ms = await heard_task
                usage.record(audio_seconds=heard.seconds)
            language = self._language(request.language, question, heard, likely)
            diagnosis: Diagnosis | None = None
            if diagnose_task is not None:
                diagnosis, timings.diagnose_ms = await diagnose_task
                usage.record(images=1)
                if diagnosis.language != language:
                    # The speech was in the other language: only the texts differ, but they
                    # come from the same call (see the module's docstring).
                    diagnosis, again_ms = await _timed(self._diagnose_now(request, language))
                    timings.diagnose_ms += again_ms
        finally:
            for task in (heard_task, diagnose_task):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()  # the other step failed: its partner's work is not wanted
                elif not task.cancelled():
                    task.exception()  # retrieved: one error is reported, not logged twice

        # "Did I understand?" before anything is advised from the speech: Whisper's own signals
        # first (a garbled transcript is not sent to the advisor at all), then the advisor's match.
        heard_ok = heard is None or doubt(heard) is None
        found = diagnosis is not None and diagnosis.status == "diagnosed"
        asked = " ".join(t for t in (question, heard.text if heard and heard_ok else None) if t) or None
        advice: Advice | None = None
        if asked is not None or found:
            advice, timings.advice_ms = await _timed(
                self._advise(asked, diagnosis, request.crop, language, request.rephrase))
            if heard is not None and heard_ok and advice is not None and not advice.understood:
                # The advisor matched the spoken question to nothing: that speech is not trusted
                # either, and the photo or the typed question is answered on its own.
                heard_ok = False
                advice = None
                if question is not None or found:
                    advice, again_ms = await _timed(
                        self._advise(question, diagnosis, request.crop, language, request.rephrase))
                    timings.advice_ms += again_ms
        answer = self._answer(diagnosis, advice, language)
        notices: list[Notice] = []
        spoken_text = spoken_answer(diagnosis, advice, language) if answer else ""
        if not heard_ok:
            caught = not_caught(language)
            notices.append(Notice(code="not_understood", message=caught))
            answer = "\n\n".join(p for p in (caught, answer) if p)
            spoken_text = " ".join(p for p in (caught, spoken_text) if p)

        audio: Spoken | None = None
        if request.speak:
            try:
                spoken, timings.speech_ms = await _timed(self.speech.speak(
                    spoken_text, language=language, voice=request.voice, fmt=request.fmt,
                    caller=request.caller))
                usage.record(audio_seconds=spoken.seconds)
                audio = spoken
            except NoVoice as exc:
                notices.append(Notice(code="no_voice", message=exc.message))
        timings.total_ms = (time.perf_counter() - began) * 1000
        return Verdict(language=language, question=question, transcript=heard.text if heard else None, heard=heard,
                       diagnosis=diagnosis, advice=advice, answer=answer, audio=audio, notices=notices,
                       timings=timings, understood=heard_ok)

    # --- steps --------------------------------------------------------------------------------

    async def _hear(self, request: Consultation) -> tuple[Heard, float]:
        assert request.audio is not None
        language = None if request.language == "auto" else request.language
        # The crops and problems the advisor knows, as the words the question is likely to hold.
        prompt = crop_hearing_prompt(self.advisor.entries, language)
        return await _timed(self.speech.hear(request.audio, language=language, caller=request.caller, param="audio",
                                             prompt=prompt))

    async def _diagnose(self, request: Consultation, language: Language) -> tuple[Diagnosis, float]:
        return await _timed(self._diagnose_now(request, language))

    async def _diagnose_now(self, request: Consultation, language: Language) -> Diagnosis:
        assert request.image is not None
        return await self.diagnoser.diagnose(request.image, crop=request.crop, language=language,
                                             compare=request.compare)

    @staticmethod
    def _language(choice: LanguageChoice, question: str | None, heard: Heard | None, likely: Language) -> Language:
        if choice != "auto":
            return choice
        if question:
            return likely
        if heard is not None:
            if heard.language in ("en", "th"):
                return heard.language  # type: ignore[return-value]
            if doubt(heard) is not None:
                return "th"  # Whisper heard another language in speech it did not follow: the farmers' language
            return _language_of(heard.text)
        return "th"

    async def _advise(self, asked: str | None, diagnosis: Diagnosis | None, crop: str | None,
                      language: Language, rephrase: bool) -> Advice:
        found = diagnosis is not None and diagnosis.status == "diagnosed"
        if found:
            assert diagnosis is not None
            query = AdviceQuery(question=asked or default_question(diagnosis, language), language=language,
                                crop=diagnosis.crop, diagnosis=diagnosis.label, use_llm=rephrase)
        else:
            # A refused or unsure photo says nothing about the disease: the question alone decides.
            assert asked is not None
            query = AdviceQuery(question=asked, language=language, crop=crop, use_llm=rephrase)
        return await self.advisor.advise(query)

    @staticmethod
    def _answer(diagnosis: Diagnosis | None, advice: Advice | None, language: Language) -> str:
        parts: list[str] = []
        if diagnosis is not None and diagnosis.status != "diagnosed":
            parts.append(diagnosis.message)
            if diagnosis.retake_tips:
                parts.append("\n".join([_RETAKE_LEAD[language], *(f"- {tip}" for tip in diagnosis.retake_tips)]))
        if advice is not None:
            parts.append(advice.answer)
        elif diagnosis is not None and diagnosis.plan_text and not parts:
            parts.append(diagnosis.plan_text)
        return "\n\n".join(parts)
