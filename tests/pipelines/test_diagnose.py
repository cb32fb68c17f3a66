"""Crop Guardian diagnosis with the real ImageNet and mango models."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kaset.errors import InvalidRequest
from kaset.knowledge.schema import load_entries
from kaset.pipelines.diagnose import CropGuardianConfig, DiagnosisService, ModelResult, Slot, Variant, combine
from tests.fixtures.images import mango_like_leaf, photo

module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
@pytest.mark.parametrize("name,expected", [("chelsea", "cat"), ("coffee", "espresso"), ("rocket", "missile")])
async def test_the_gate_refuses_non_plants(diagnoser: DiagnosisService, name: str, expected: str) -> None:
    result = await diagnoser.diagnose(photo(name), crop="mango", language="en")
    assert result.status == "not_a_plant"
    assert expected in result.message and "not a plant" in result.message
    assert result.per_model == [] and result.plan_text is None


@module_loop
async def test_refusal_in_thai(diagnoser: DiagnosisService) -> None:
    result = await diagnoser.diagnose(photo("chelsea"), crop="mango", language="th")
    assert result.status == "not_a_plant" and "ไม่ใช่พืช" in result.message


@module_loop
async def test_a_flower_is_a_plant_but_not_a_mango(diagnoser: DiagnosisService) -> None:
    result = await diagnoser.diagnose(photo("flower"), crop="mango", language="en")
    assert result.gate is not None and result.gate.passed
    assert result.status == "not_this_crop" and "daisy" in result.message and result.retake_tips
    assert result.decided_by == "imagenet_foreign_plant"


@module_loop
@pytest.mark.parametrize("language,plan_word", [("en", "What to do now"), ("th", "สิ่งที่ควรทำตอนนี้")])
async def test_mango_path_returns_a_plan(diagnoser: DiagnosisService, language: str, plan_word: str) -> None:
    result = await diagnoser.diagnose(mango_like_leaf(seed=2, spots=25), crop=None, language=language)  # type: ignore[arg-type]
    assert result.crop == "mango" and result.crop_source == "inferred"
    assert result.status == "diagnosed", result.message
    assert result.label in {"Anthracnose", "Bacterial Canker", "Healthy", "Powdery Mildew", "Scab", "Sooty Mould",
                            "Stem End Rot"}
    assert result.entry is not None and result.entry.crop == "mango"
    assert result.plan_text is not None and plan_word in result.plan_text
    assert [m.model for m in result.per_model] == ["mango-disease"]
    assert result.per_model[0].version


@module_loop
async def test_unsure_below_threshold(diagnoser: DiagnosisService) -> None:
    strict = diagnoser.config.model_copy(deep=True)
    strict.crops["mango"].unsure_below = 0.999
    picky = DiagnosisService(diagnoser.manager, load_entries(), strict)
    result = await picky.diagnose(mango_like_leaf(seed=2, spots=25), crop="mango", language="en")
    assert result.status == "unsure" and result.plan_text is None and len(result.retake_tips) >= 3


@module_loop
async def test_crop_without_a_model(diagnoser: DiagnosisService) -> None:
    result = await diagnoser.diagnose(mango_like_leaf(seed=0, spots=0), crop="rice", language="en")
    assert result.status == "no_model" and "advice" in result.message


@module_loop
async def test_unknown_crop(diagnoser: DiagnosisService) -> None:
    with pytest.raises(InvalidRequest, match="banana"):
        await diagnoser.diagnose(mango_like_leaf(seed=0, spots=0), crop="banana", language="en")


def test_ab_split_follows_weights_and_sticks_to_a_key() -> None:
    slot = Slot(name="s", variants=[Variant(model="a", weight=9), Variant(model="b", weight=1)])
    config = CropGuardianConfig.load()
    diagnoser = DiagnosisService.__new__(DiagnosisService)
    diagnoser.config, diagnoser.rng = config, random.Random(7)
    picks = [diagnoser.choose_variant(slot, None).model for _ in range(2000)]
    assert 0.85 < picks.count("a") / len(picks) < 0.95
    assert len({diagnoser.choose_variant(slot, "device-42").model for _ in range(20)}) == 1


def test_ensembles() -> None:
    labels = ["x", "y", "z"]
    results = [ModelResult("a", "m1", "1", [], np.array([0.6, 0.3, 0.1])),
               ModelResult("b", "m2", "1", [], np.array([0.2, 0.7, 0.1])),
               ModelResult("c", "m3", "1", [], np.array([0.1, 0.8, 0.1]))]
    average = combine(results, [1.0, 1.0, 1.0], "weighted_average", labels)
    assert np.isclose(average.sum(), 1) and int(np.argmax(average)) == 1
    heavy_first = combine(results, [10.0, 1.0, 1.0], "weighted_average", labels)
    assert int(np.argmax(heavy_first)) == 0
    vote = combine(results, [1.0, 1.0, 1.0], "vote", labels)
    assert int(np.argmax(vote)) == 1 and vote[2] == 0


@module_loop
async def test_compare_runs_every_version(diagnoser: DiagnosisService) -> None:
    result = await diagnoser.diagnose(mango_like_leaf(seed=2, spots=25), crop="mango", language="en", compare=True)
    assert sorted((m.model, m.version) for m in result.per_model) == [("mango-disease", "1"), ("mango-disease", "2")]
    assert result.ensemble == "weighted_average"
    # Version 2 averages the photo with its mirror image, so the two versions differ.
    assert not np.allclose(result.per_model[0].probabilities, result.per_model[1].probabilities)


@module_loop
async def test_ab_split_reports_the_version_that_answered(diagnoser: DiagnosisService) -> None:
    versions = set()
    for key in ("farm-1", "farm-2", "farm-3", "farm-4", "farm-5", "farm-6", "farm-7", "farm-8", "farm-9", "farm-10",
                "farm-11", "farm-12", "farm-13", "farm-14", "farm-15", "farm-16", "farm-17", "farm-18"):
        result = await diagnoser.diagnose(mango_like_leaf(seed=2, spots=25), crop="mango", language="en", ab_key=key)
        assert len(result.per_model) == 1
        versions.add(result.per_model[0].version)
    assert versions == {"1", "2"}
