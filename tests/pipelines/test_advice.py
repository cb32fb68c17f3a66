"""Grounded advice with the real embeddings model, the real LLM and the curated knowledge base."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kaset.errors import InvalidRequest
from kaset.knowledge.schema import load_entries
from kaset.pipelines.advice import AdviceQuery, AdviceService, curated_answer, detect_language
from kaset.pipelines.advice_rephrasing import validate_rephrasing
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository


@pytest.fixture(scope="module")
async def advisor(
    catalog: Catalog, installed: Callable[[str], object], models_dir: Path
) -> AsyncIterator[AdviceService]:
    installed("e5-small")
    installed("smollm2-135m")
    manager = ModelManager(catalog, ModelRepository(models_dir))
    yield AdviceService(manager)
    await manager.close()


def _curated(entry_id: str) -> str:
    entries = {e.id: e for e in load_entries()}
    return curated_answer(entries[entry_id], "en")


def test_detect_language() -> None:
    assert detect_language("ใบข้าวมีจุดสีน้ำตาล ทำอย่างไรดี") == "th"
    assert detect_language("My rice leaves have brown spots") == "en"
    with pytest.raises(InvalidRequest, match="Thai or English"):
        detect_language("我的水稻叶子上有褐色斑点")
    with pytest.raises(InvalidRequest):
        detect_language("12345 ???")


@pytest.mark.asyncio(loop_scope="module")
async def test_english_question_retrieves_rice_blast(advisor: AdviceService) -> None:
    advice = await advisor.advise(AdviceQuery(
        question="My rice has eye-shaped grey spots on the leaves and the panicles turn white", crop="rice"))
    assert advice.hits[0].entry.id == "rice-blast"
    assert advice.language == "en"
    assert advice.path in ("llm", "curated")
    if advice.path == "curated":
        assert advice.answer == advice.curated
    else:
        assert validate_rephrasing(advice.answer, advice.curated, "en") is None


@pytest.mark.asyncio(loop_scope="module")
async def test_thai_question_is_answered_in_thai_from_curated_text(advisor: AdviceService) -> None:
    advice = await advisor.advise(AdviceQuery(question="มันสำปะหลังใบด่างเหลือง ใบหงิกเสียรูป ต้นแคระ ควรทำอย่างไร"))
    assert advice.hits[0].entry.id == "cassava-mosaic-disease"
    assert advice.language == "th" and advice.path == "curated"
    assert "โรคใบด่าง" in advice.answer
    assert any("does not write th" in note for note in advice.notes)


@pytest.mark.asyncio(loop_scope="module")
async def test_cross_lingual_answer_language(advisor: AdviceService) -> None:
    advice = await advisor.advise(AdviceQuery(question="durian tree trunk oozing, root rot", language="th",
                                              use_llm=False))
    assert advice.hits[0].entry.id == "durian-phytophthora-root-rot"
    assert detect_language(advice.answer) == "th"


@pytest.mark.asyncio(loop_scope="module")
async def test_diagnosis_label_selects_the_entry(advisor: AdviceService) -> None:
    advice = await advisor.advise(AdviceQuery(question="What should I do?", crop="mango", diagnosis="Sooty Mould",
                                              use_llm=False, month=3))
    assert advice.hits[0].entry.id == "mango-sooty-mould"
    assert advice.answer.startswith("Sooty")


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_crop_is_refused(advisor: AdviceService) -> None:
    with pytest.raises(InvalidRequest, match="Unknown crop"):
        await advisor.advise(AdviceQuery(question="spots on leaves", crop="banana"))


def test_invented_product_is_rejected() -> None:
    curated = _curated("mango-anthracnose")
    invented = ("Anthracnose causes dark spots on mango leaves and fruit. Spray chlorpyrifos every week and "
                "remove infected leaves to stop the disease.")
    reason = validate_rephrasing(invented, curated, "en")
    assert reason is not None and "chlorpyrifos" in reason


def test_invented_dose_is_rejected() -> None:
    curated = _curated("mango-anthracnose")
    reason = validate_rephrasing("Anthracnose on mango: spray mancozeb at 937 grams on infected leaves and fruit.",
                                 curated, "en")
    assert reason is not None and "937" in reason


def test_wrong_language_is_rejected() -> None:
    curated = _curated("rice-blast")
    assert "not in English" in (validate_rephrasing("โรคไหม้ข้าว ให้ฉีดพ่นสารไตรไซคลาโซลตามฉลาก", curated, "en") or "")


def test_faithful_rewrite_passes() -> None:
    entry = {e.id: e for e in load_entries()}["rice-blast"]
    content = entry.en
    faithful = f"{content.summary} {content.cultural_treatment[0]} {content.prevention[0]}"
    assert validate_rephrasing(faithful, curated_answer(entry, "en"), "en") is None


def test_made_up_claims_and_reversals_are_rejected() -> None:
    curated = _curated("cassava-mealybug")
    made_up = "Cassava mealybugs: Cinnamon is the most effective natural medicine against these pests."
    assert "not in the curated advice" in (validate_rephrasing(made_up, curated, "en") or "")
    anthracnose = _curated("mango-anthracnose")
    first_action = anthracnose.split("What to do now:\n- ", 1)[1].split("\n", 1)[0]
    reversed_ = f"Do not {first_action[0].lower()}{first_action[1:]}"
    assert "turns the advice around" in (validate_rephrasing(reversed_, anthracnose, "en") or ""), reversed_


def test_curated_answer_has_actions_and_label_warning() -> None:
    entry = {e.id: e for e in load_entries()}["rice-blast"]
    text = curated_answer(entry, "th", month=9)
    assert text.startswith("โรคไหม้ข้าว") and "ฉลาก" in text and "ช่วงที่พบ" in text
