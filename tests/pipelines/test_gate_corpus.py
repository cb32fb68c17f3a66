"""The gate against every real photo in reach that is not a mango leaf, with the real models.

Zero of them may come back diagnosed, with or without crop=mango, in each of four forms (as
shipped, turned a quarter, centre-cropped, thumbnail). A real leaf of another plant must be told
"this does not look like a mango leaf", not "not a plant". The drawn mango-like leaves must still
reach the mango model and most be diagnosed. Recall on real mango photos cannot be measured
here: none ships in any package in reach (docs/crop-guardian.md says so).
"""

from __future__ import annotations

from collections import Counter

import pytest

from kaset.pipelines.diagnose import DiagnosisService
from tests.fixtures.images import REDPATCH_LEAVES, mango_like_leaf, not_mango_photos, redpatch_leaf, variants

module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
@pytest.mark.parametrize("crop", ["mango", None])
async def test_no_photo_that_is_not_a_mango_leaf_is_diagnosed(diagnoser: DiagnosisService, crop: str | None) -> None:
    outcomes: Counter[str] = Counter()
    diagnosed = []
    for name, photo in not_mango_photos():
        for suffix, variant in variants(photo):
            result = await diagnoser.diagnose(variant, crop=crop, language="en")
            outcomes[result.status] += 1
            assert result.decided_by, f"{name}{suffix}: no signal named for {result.status}"
            if result.status == "diagnosed":
                diagnosed.append(f"{name}{suffix}: {result.label} {result.confidence:.0%}")
            else:
                assert result.plan_text is None and result.entry is None
    assert sum(outcomes.values()) >= 36 * 4
    assert diagnosed == [], diagnosed
    print(dict(outcomes))


@module_loop
@pytest.mark.parametrize("name", REDPATCH_LEAVES)
@pytest.mark.parametrize("language,words", [("en", "does not look like a mango leaf"), ("th", "ดูไม่เหมือนใบมะม่วง")])
async def test_a_real_leaf_of_another_plant_is_not_a_mango_leaf(diagnoser: DiagnosisService, name: str,
                                                                language: str, words: str) -> None:
    result = await diagnoser.diagnose(redpatch_leaf(name), crop="mango", language=language)  # type: ignore[arg-type]
    assert result.status == "not_this_crop", (result.status, result.decided_by, result.message)
    assert words in result.message and result.decided_by == "leaf_elongation"
    assert result.gate is not None and result.gate.passed  # it is a plant


@module_loop
async def test_drawn_mango_like_leaves_still_reach_the_model(diagnoser: DiagnosisService) -> None:
    statuses = Counter()
    for seed in range(12):
        leaf = mango_like_leaf(seed=seed, spots=(seed * 7) % 30)
        result = await diagnoser.diagnose(leaf, crop="mango", language="en")
        statuses[result.status] += 1
        assert result.status in ("diagnosed", "unsure"), (seed, result.decided_by, result.message)
        assert result.per_model, "the gate let the leaf through to the mango model"
    assert statuses["diagnosed"] >= 8, statuses


@module_loop
async def test_every_signal_is_reported(diagnoser: DiagnosisService) -> None:
    result = await diagnoser.diagnose(mango_like_leaf(seed=2, spots=25), crop="mango", language="en")
    assert result.gate is not None
    names = [s.name for s in result.gate.signals]
    assert names == ["imagenet_plant_mass", "imagenet_object", "leaf_colour", "leaf_elongation", "leaf_area",
                     "leaf_edges", "leaf_solidity", "crop_model_agreement", "crop_confidence"]
    assert all(s.passed for s in result.gate.signals[2:])
    assert result.confidence_level in ("high", "moderate")
