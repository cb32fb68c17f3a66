"""The crop doctor's spoken answer: short (the diagnosis, one to three whole actions, "the details
are on the screen"), from the curated entry, in the farmer's language; refusals say the message
and one retake tip. The last test measures it with Piper's English voice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from kaset.knowledge.schema import Entry, load_entries
from kaset.language import Language
from kaset.pipelines.advice import Advice, Hit
from kaset.pipelines.diagnose import Diagnosis, GateResult
from kaset.pipelines.diagnosis_text import RETAKE_TIPS, not_a_plant, unsure
from kaset.pipelines.spoken_answer import BUDGET, MAX_ACTIONS, spoken_answer
from kaset.registry.catalog import Catalog

ENTRIES = load_entries()
Level = Literal["high", "moderate"] | None
BY_ID = {entry.id: entry for entry in ENTRIES}
# Piper's English voice says about 17 characters a second (measured below): 25 s is ~420.
MAX_CHARS: dict[Language, int] = {"en": 420, "th": 320}
DETAILS = {"en": "The details are on the screen.", "th": "รายละเอียดอยู่บนหน้าจอ"}


def diagnosed(entry: Entry, language: Language, level: Level = "high") -> Diagnosis:
    diagnosis = Diagnosis(status="diagnosed", language=language, crop=entry.crop, crop_source="given",
                          message=entry.content(language).name, gate=None, label="X", confidence=0.9, entry=entry)
    diagnosis.confidence_level = level
    return diagnosis


def advice_on(entry: Entry, language: Language) -> Advice:
    return Advice(answer="(the whole curated answer)", language=language, path="curated", hits=[Hit(entry, 1.0)],
                  curated="(the whole curated answer)")


def actions_said(text: str, entry: Entry, language: Language) -> list[str]:
    return [a for a in entry.content(language).cultural_treatment if " ".join(a.split()).rstrip(".") in text]


@pytest.mark.parametrize("language", ["en", "th"])
@pytest.mark.parametrize("level", ["high", "moderate", None])
def test_every_entry_is_said_briefly_with_whole_actions(language: Language, level: Level) -> None:
    for entry in ENTRIES:
        content = entry.content(language)
        said = spoken_answer(diagnosed(entry, language, level), None, language)
        assert len(said) <= MAX_CHARS[language], (entry.id, len(said), said)
        assert content.name in said and said.endswith(DETAILS[language])
        actions = actions_said(said, entry, language)
        assert 1 <= len(actions) <= MAX_ACTIONS, (entry.id, said)
        # The first actions, in the entry's order, each one whole.
        assert actions == content.cultural_treatment[:len(actions)]
        for chemical in content.chemical_treatment:
            assert chemical.active_ingredient not in said  # spraying stays on the screen with its safety lines
        for line in content.safety:
            assert line not in said


def test_the_budget_takes_more_than_one_action_when_they_fit() -> None:
    said = spoken_answer(diagnosed(BY_ID["cassava-mealybug"], "en"), None, "en")
    assert len(actions_said(said, BY_ID["cassava-mealybug"], "en")) >= 2
    assert len(said) <= BUDGET["en"]


def test_english_diagnosis() -> None:
    said = spoken_answer(diagnosed(BY_ID["mango-anthracnose"], "en"), None, "en")
    assert said.startswith("This looks like Mango anthracnose. What to do now: Cut out dead twigs")
    assert "extension officer" not in said


def test_moderate_confidence_says_to_check_with_an_extension_officer() -> None:
    said = spoken_answer(diagnosed(BY_ID["mango-anthracnose"], "en", "moderate"), None, "en")
    assert "check with an extension officer" in said
    thai = spoken_answer(diagnosed(BY_ID["mango-anthracnose"], "th", "moderate"), None, "th")
    assert "ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร" in thai
    assert thai.startswith("ภาพนี้ดูเหมือนโรคแอนแทรคโนสมะม่วง")


def test_healthy() -> None:
    said = spoken_answer(diagnosed(BY_ID["mango-healthy"], "en"), None, "en")
    assert said.startswith("Healthy mango: no disease found. To keep it healthy: No treatment is needed now.")


def test_an_answer_to_a_question() -> None:
    said = spoken_answer(None, advice_on(BY_ID["rice-blast"], "en"), "en")
    assert said.startswith("For Rice blast, what to do now: ") and said.endswith(DETAILS["en"])
    thai = spoken_answer(None, advice_on(BY_ID["rice-blast"], "th"), "th")
    assert thai.startswith(BY_ID["rice-blast"].th.name) and "สิ่งที่ควรทำตอนนี้" in thai
    assert len(thai) <= MAX_CHARS["th"]


def test_a_question_not_understood_speaks_no_entry() -> None:
    advice = advice_on(BY_ID["mango-scab"], "th")
    advice.understood, advice.answer = False, "ขอโทษค่ะ ไม่เข้าใจคำถาม กรุณาพูดอีกครั้ง"
    said = spoken_answer(None, advice, "th")
    assert said == "ขอโทษค่ะ ไม่เข้าใจคำถาม กรุณาพูดอีกครั้ง" and BY_ID["mango-scab"].th.name not in said
    # With a diagnosed photo, the photo's answer is spoken and the misheard question adds nothing.
    photo = spoken_answer(diagnosed(BY_ID["mango-anthracnose"], "en"), advice_on(BY_ID["mango-scab"], "en"), "en")
    advice_en = advice_on(BY_ID["mango-scab"], "en")
    advice_en.understood = False
    assert spoken_answer(diagnosed(BY_ID["mango-anthracnose"], "en"), advice_en, "en") == photo


@pytest.mark.parametrize("language", ["en", "th"])
def test_a_refused_photo_says_the_message_and_one_tip(language: Language) -> None:
    gate = GateResult(passed=False, top=[], plant_score=0.0, model="efficientnet-lite0", version="1",
                      refused_as="espresso")
    refused = Diagnosis(status="not_a_plant", language=language, crop="mango", crop_source="given",
                        message=not_a_plant("espresso", language, index=967), gate=gate,
                        retake_tips=RETAKE_TIPS[language])
    said = spoken_answer(refused, None, language)
    assert said.startswith(refused.message)
    assert [tip for tip in RETAKE_TIPS[language] if tip in said] == [RETAKE_TIPS[language][2]]  # fill the frame
    assert len(said) <= BUDGET[language]
    # With a question asked too, the voice answers it briefly after the refusal.
    both = spoken_answer(refused, advice_on(BY_ID["mango-anthracnose"], language), language)
    assert both.startswith(said.rsplit(" ", 1)[0][: len(refused.message)])
    assert BY_ID["mango-anthracnose"].content(language).name in both and len(both) <= MAX_CHARS[language]


def test_unsure_says_the_focus_tip() -> None:
    doubt = Diagnosis(status="unsure", language="en", crop="mango", crop_source="given", message=unsure(0.41, "en"),
                      gate=None, retake_tips=RETAKE_TIPS["en"])
    said = spoken_answer(doubt, None, "en")
    assert said == f"{unsure(0.41, 'en')} {RETAKE_TIPS['en'][0]} More tips are on the screen."


def test_no_model_is_the_message() -> None:
    message = "There is no photo model for rice yet (there is for mango). Describe the symptoms instead."
    none = Diagnosis(status="no_model", language="en", crop="rice", crop_source="given", message=message, gate=None)
    assert spoken_answer(none, None, "en") == message


# --- with Piper -------------------------------------------------------------------------------


async def test_spoken_seconds_with_piper(catalog: Catalog, installed: Callable[[str], object],
                                         models_dir: Path) -> None:
    from kaset.pipelines.speech import SpeechService
    from kaset.registry.manager import ModelManager
    from kaset.registry.repository import ModelRepository
    from kaset.registry.routing import Router

    installed("piper-joe")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    speech = SpeechService(Router(manager), manager, max_audio_seconds=60)
    try:
        texts = {entry.id: spoken_answer(diagnosed(entry, "en", "moderate"), None, "en") for entry in ENTRIES}
        longest = max(texts, key=lambda key: len(texts[key]))
        cases = {f"longest ({longest})": texts[longest], "mango-anthracnose": texts["mango-anthracnose"],
                 "question: rice-blast": spoken_answer(None, advice_on(BY_ID["rice-blast"], "en"), "en")}
        for name, text in cases.items():
            spoken = await speech.speak(text, language="en", fmt="wav")
            print(f"{name}: {len(text)} characters, {spoken.seconds:.1f} s")  # shown with -s
            assert spoken.seconds <= 25, (name, spoken.seconds, text)
    finally:
        await manager.close()
