"""Advice retrieval quality on farmers' own questions, with the real multilingual-e5 embedder.

tests/pipelines/advice_questions.yaml holds 73 questions in Thai and English (by symptom, in
growers' words, with and without the `crop` field, a few with a `diagnosis` hint), each with the
entry that should answer it, 25 more written after the retrieval was changed (reported apart),
and 20 strings that are no question (garbled transcripts, noise, other topics). Run with `-s` to
see the figures docs/crop-guardian.md quotes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kaset.pipelines.advice import (
    Advice,
    AdviceQuery,
    AdviceService,
    curated_answer,
    detect_language,
    not_understood_answer,
)
from kaset.pipelines.advice_retrieval import UNDERSTOOD_THRESHOLD
from kaset.pipelines.advice_terms import NEGATED, describes_symptoms, question_terms
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository

DATA = yaml.safe_load((Path(__file__).parent / "advice_questions.yaml").read_text(encoding="utf-8"))
QUESTIONS: list[dict[str, str]] = DATA["questions"]
LATER: list[dict[str, str]] = DATA["later_questions"]
NOT_QUESTIONS: list[str] = DATA["not_questions"]
HEALTHY = "mango-healthy"
MIN_TOP1 = 0.97
MIN_TOP1_LATER = 0.9  # questions the retrieval was not changed on: 24 of 25 when written

module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Answered:
    item: dict[str, str]
    advice: Advice
    symptomatic: bool

    @property
    def top(self) -> str:
        return self.advice.hits[0].entry.id


@pytest.fixture(scope="module")
async def advisor(
    catalog: Catalog, installed: Callable[[str], object], models_dir: Path
) -> AsyncIterator[AdviceService]:
    installed("e5-small")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield AdviceService(manager, llm_model=None)
    await manager.close()


async def _answer_all(advisor: AdviceService, items: list[dict[str, str]]) -> list[Answered]:
    index = await advisor.index()
    out = []
    for item in items:
        query = AdviceQuery(question=item["q"], crop=item.get("crop"), diagnosis=item.get("diagnosis"),
                            use_llm=False)
        symptomatic = index.describes_symptoms(item["q"], detect_language(item["q"]))
        out.append(Answered(item, await advisor.advise(query), symptomatic))
    return out


@pytest.fixture(scope="module")
async def answered(advisor: AdviceService) -> list[Answered]:
    return await _answer_all(advisor, QUESTIONS)


@pytest.fixture(scope="module")
async def answered_later(advisor: AdviceService) -> list[Answered]:
    return await _answer_all(advisor, LATER)


@pytest.fixture(scope="module")
async def nonsense(advisor: AdviceService) -> list[Advice]:
    return [await advisor.advise(AdviceQuery(question=text, use_llm=False)) for text in NOT_QUESTIONS]


def test_question_set_is_broad() -> None:
    from kaset.knowledge.schema import load_entries

    assert len(QUESTIONS) >= 60 and len(NOT_QUESTIONS) >= 15
    assert {e.id for e in load_entries()} == {item["expect"] for item in QUESTIONS}
    thai = sum(1 for item in QUESTIONS if detect_language(item["q"]) == "th")
    assert 0.4 <= thai / len(QUESTIONS) <= 0.6
    assert any("crop" in item for item in QUESTIONS) and any("crop" not in item for item in QUESTIONS)
    assert any("diagnosis" in item for item in QUESTIONS)
    assert {detect_language(text) for text in NOT_QUESTIONS} == {"en", "th"}


@module_loop
async def test_top1_accuracy(answered: list[Answered]) -> None:
    wrong = [(a.item["expect"], a.top, a.item["q"]) for a in answered if a.top != a.item["expect"]]
    accuracy = 1 - len(wrong) / len(answered)
    print(f"\ntop-1: {len(answered) - len(wrong)}/{len(answered)} = {accuracy:.1%}; wrong: {wrong}")
    assert accuracy >= MIN_TOP1, wrong


@module_loop
async def test_top1_on_later_questions(answered_later: list[Answered]) -> None:
    wrong = [(a.item["expect"], a.top, a.item["q"]) for a in answered_later if a.top != a.item["expect"]]
    accuracy = 1 - len(wrong) / len(answered_later)
    print(f"\nlater questions top-1: {len(answered_later) - len(wrong)}/{len(answered_later)} = {accuracy:.1%}; "
          f"wrong: {wrong}; lowest match score {min(a.advice.match_score for a in answered_later):.3f}")
    assert accuracy >= MIN_TOP1_LATER, wrong
    assert all(a.top != HEALTHY for a in answered_later if a.item["expect"] != HEALTHY)
    assert all(a.advice.understood for a in answered_later)


@module_loop
@pytest.mark.parametrize("number", range(len(QUESTIONS)), ids=[item["expect"] for item in QUESTIONS])
async def test_healthy_never_answers_a_symptom(answered: list[Answered], number: int) -> None:
    a = answered[number]
    if a.item["expect"] == HEALTHY:
        assert not a.symptomatic, a.item["q"]  # the healthy questions describe no symptom
        return
    assert a.top != HEALTHY, a.item["q"]
    if a.symptomatic:
        assert all(hit.entry.kind != "healthy" for hit in a.advice.hits), a.item["q"]


@module_loop
async def test_the_anthracnose_question_of_the_issue(answered: list[Answered]) -> None:
    (a,) = [a for a in answered if a.item["q"] == "ใบมะม่วงมีจุดสีดำและผลเน่า ควรทำอย่างไร"]
    assert a.symptomatic and a.top == "mango-anthracnose" and a.advice.understood
    assert a.advice.answer.startswith("โรคแอนแทรคโนสมะม่วง")


@module_loop
async def test_understood_separates_questions_from_nonsense(answered: list[Answered],
                                                            nonsense: list[Advice]) -> None:
    # A diagnosis hint decides the entry on its own ("what do I do about it?"): those questions are
    # understood by the diagnosis, and their own words are left out of the distribution.
    real = sorted(a.advice.match_score for a in answered if "diagnosis" not in a.item)
    noise = sorted(advice.match_score for advice in nonsense)
    print(f"\nmatch score, {len(real)} questions: min {real[0]:.3f}, 5th percentile {real[len(real) // 20]:.3f}, "
          f"median {real[len(real) // 2]:.3f}; {len(noise)} non-questions: max {noise[-1]:.3f}, "
          f"median {noise[len(noise) // 2]:.3f}; threshold {UNDERSTOOD_THRESHOLD}")
    assert noise[-1] < UNDERSTOOD_THRESHOLD <= real[0]
    assert all(a.advice.understood for a in answered), [a.item["q"] for a in answered if not a.advice.understood]
    assert not any(advice.understood for advice in nonsense)


@module_loop
async def test_not_understood_answer_asks_again_without_a_plan(nonsense: list[Advice]) -> None:
    for text, advice in zip(NOT_QUESTIONS, nonsense, strict=True):
        language = detect_language(text)
        assert advice.language == language and advice.path == "curated"
        assert advice.answer == advice.curated == not_understood_answer(language)
        assert advice.hits  # still listed, as suggestions
        plan = curated_answer(advice.hits[0].entry, language)
        assert plan.split("\n", 1)[0] not in advice.answer
        assert "What to do now" not in advice.answer and "สิ่งที่ควรทำตอนนี้" not in advice.answer
        assert any("asked to rephrase" in note for note in advice.notes)
    assert "did not understand" in not_understood_answer("en")
    assert "ไม่เข้าใจ" in not_understood_answer("th")


@module_loop
async def test_diagnosis_hint_and_healthy_photo(advisor: AdviceService) -> None:
    # The photo model said Healthy but the farmer describes spots: the healthy entry steps aside.
    advice = await advisor.advise(AdviceQuery(question="the leaves have black spots and the fruit rots",
                                              crop="mango", diagnosis="Healthy", use_llm=False))
    assert advice.hits[0].entry.id != HEALTHY and advice.understood
    assert any("did not decide" in note for note in advice.notes)
    # With nothing wrong described, the healthy diagnosis answers.
    advice = await advisor.advise(AdviceQuery(question="what should I do next?", crop="mango", diagnosis="Healthy",
                                              use_llm=False))
    assert advice.hits[0].entry.id == HEALTHY and advice.understood


@module_loop
async def test_http_response_carries_the_two_fields(answered: list[Answered], nonsense: list[Advice]) -> None:
    from kaset.api.routers.advice import to_response

    real = to_response(answered[0].advice).model_dump()
    garbled = to_response(nonsense[0]).model_dump()
    assert real["understood"] is True and real["match_score"] == round(answered[0].advice.match_score, 4)
    assert garbled["understood"] is False and garbled["match_score"] < UNDERSTOOD_THRESHOLD
    assert garbled["citations"] and garbled["answer"] == not_understood_answer("th")


@pytest.mark.parametrize(("text", "language", "symptom"), [
    ("My mango trees look fine, no spots anywhere", "en", False),
    ("The leaves don't have any spots", "en", False),
    ("no spots, but the leaves are turning yellow", "en", True),
    ("the young fruit are not growing", "en", True),
    ("when should I spray against anthracnose?", "en", True),
    ("how often should I walk the orchard?", "en", False),
    ("ต้นมะม่วงสวยดี ไม่มีโรค ไม่มีจุด", "th", False),
    ("ยังไม่เห็นอะไรผิดปกติ", "th", False),
    ("ดอกร่วงหมด ไม่ติดลูก", "th", True),
    ("ข้าวไม่โตเลย", "th", True),
    ("ใบมะม่วงมีจุดสีดำ", "th", True),
])
def test_describes_symptoms(text: str, language: str, symptom: bool) -> None:
    assert describes_symptoms(text, language, frozenset({"anthracnose"})) is symptom  # type: ignore[arg-type]


def test_terms_share_growers_words_and_mark_negation() -> None:
    assert question_terms("tiny dots and specks", "en") == ["tiny", "spot", "spot"]
    assert question_terms("no spots", "en") == [NEGATED + "spot"]
    # ลูก is what growers call a fruit (ผล); สีดำ is also ดำ (black); the negated ติด is apart.
    terms = question_terms("ลูกมีจุดสีดำ ไม่ติด", "th")
    assert "ผล" in terms and "ดำ" in terms and "จุด" in terms and NEGATED + "ติด" in terms and "ติด" not in terms
