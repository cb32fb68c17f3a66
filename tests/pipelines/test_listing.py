"""The listing writer with the real classifier and SmolLM2-135M: schema validation, grounding,
grammar-constrained generation, the retry, the repair and the template paths."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from kaset.pipelines.describe import DescribeService
from kaset.pipelines.diagnose import Scored
from kaset.pipelines.listing import LLM_PARAMS, ListingService
from kaset.pipelines.listing_categories import suggest_categories
from kaset.pipelines.listing_grounding import Evidence, build_listing, check_grounding
from kaset.pipelines.listing_schema import CATEGORIES, Listing, listing_schema, parse_listing, salvage_fields
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router
from kaset.runtimes.base import ChatModel, GenerationParams
from tests.fixtures.images import photo

module_loop = pytest.mark.asyncio(loop_scope="module")

GOOD = {"title": "Espresso", "description": "A cup of espresso.", "keywords": ["espresso", "cup", "coffee"],
        "categories": ["Food & drinks"]}
ESPRESSO = [Scored("espresso", 967, 0.9), Scored("cup", 968, 0.05)]


@pytest.fixture(scope="module")
async def manager(installed: Callable[[str], object], models_dir: Path) -> AsyncIterator[ModelManager]:
    installed("efficientnet-lite0")
    installed("smollm2-135m")
    manager = ModelManager(Catalog.load(), ModelRepository(models_dir))
    yield manager
    await manager.close()


def service(manager: ModelManager, **kwargs: object) -> ListingService:
    return ListingService(DescribeService(manager), Router(manager), **kwargs)  # type: ignore[arg-type]


def assert_valid_and_grounded(listing: Listing, evidence: Evidence, max_keywords: int = 8) -> None:
    # Re-validated from plain JSON against both the pydantic model and the published JSON schema.
    data = json.loads(listing.model_dump_json())
    jsonschema.validate(data, listing_schema(max_keywords))
    Listing.model_validate(data, context={"max_keywords": max_keywords})
    assert check_grounding(listing, evidence) == []


# --- validation (no model) ---------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"title": "x" * 81}, "at most 80 characters"),
    ({"title": "   "}, "must not be blank"),
    ({"keywords": ["espresso", "cup"]}, "at least 3 items"),
    ({"keywords": ["espresso", "Espresso", "cup"]}, "keywords must be unique"),
    ({"keywords": ["a", "cup", "coffee"]}, "2 to 40 characters"),
    ({"categories": ["Coffee"]}, "Input should be"),
    ({"categories": []}, "at least 1 item"),
    ({"categories": ["Food & drinks", "Food & drinks"]}, "categories must be unique"),
    ({"categories": ["Fruit", "Vegetables", "Pets", "Other"]}, "at most 3 items"),
])
def test_the_model_rejects_bad_listings(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Listing.model_validate({**GOOD, **change})


def test_max_keywords_comes_from_the_request() -> None:
    five = {**GOOD, "keywords": ["espresso", "cup", "coffee", "drink", "mug"]}
    Listing.model_validate(five, context={"max_keywords": 5})
    with pytest.raises(ValidationError, match="at most 4 are allowed"):
        Listing.model_validate(five, context={"max_keywords": 4})
    schema = listing_schema(4)
    assert schema["properties"]["keywords"]["maxItems"] == 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(five, schema)


def test_the_schema_lists_the_categories_and_refuses_extra_fields() -> None:
    schema = listing_schema()
    assert schema["properties"]["categories"]["items"]["enum"] == list(CATEGORIES)
    assert "Fruit" in CATEGORIES and "Rice, grains & seeds" in CATEGORIES
    jsonschema.validate(GOOD, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "price": 10}, schema)
    listing, _fields, errors = parse_listing(json.dumps({**GOOD, "price": 10}), 8)
    assert listing is None and errors == ["unexpected fields: price"]


def test_broken_json_is_reported_and_its_complete_fields_salvaged() -> None:
    cut = '{"title": "Espresso \\"doppio\\"", "description": "A cup of esp'
    listing, fields, errors = parse_listing(cut, 8)
    assert listing is None and errors[0].startswith("not valid JSON")
    assert fields == {"title": 'Espresso "doppio"'}
    assert salvage_fields('{"keywords": ["cup", "espresso", "mu') == {"keywords": ["cup", "espresso"]}


def test_categories_come_from_the_labels() -> None:
    assert suggest_categories([Scored("banana", 954, 0.9)]) == ["Fruit"]
    assert suggest_categories([Scored("corn", 987, 0.9)]) == ["Vegetables", "Rice, grains & seeds"]
    assert suggest_categories([Scored("golden retriever", 207, 0.6), Scored("tabby", 281, 0.2)]) == ["Pets"]
    assert suggest_categories([Scored("water buffalo", 346, 0.7)]) == ["Livestock & poultry"]
    assert suggest_categories(ESPRESSO) == ["Food & drinks", "Kitchen & dining"]
    assert suggest_categories([Scored("tractor", 866, 0.8)]) == ["Farm tools & machinery", "Vehicles"]
    # "car" is a vehicle; "cardigan" is not.
    assert suggest_categories([Scored("cardigan", 474, 0.8)]) == ["Clothing & accessories"]
    assert suggest_categories([Scored("missile", 657, 0.4)]) == ["Other"]


def test_grounding_rejects_what_the_labels_do_not_support() -> None:
    evidence = Evidence(ESPRESSO, "The photo most likely shows an espresso.", notes="Arabica beans from Nan")
    invented = Listing.model_validate({
        "title": "Molten metal espresso", "description": "A delicious espresso with a rich, bold flavor.",
        "keywords": ["espresso", "barista", "arabica"], "categories": ["Food & drinks", "Fruit"]})
    errors = check_grounding(invented, evidence)
    assert any(e.startswith("title:") and "molten" in e for e in errors)
    assert any(e.startswith("description:") and "delicious" in e for e in errors)
    # "arabica" comes from the seller's notes; "barista" from nowhere.
    assert any(e.startswith("keywords:") and "'barista'" in e and "arabica" not in e for e in errors)
    assert any(e.startswith("categories:") and "'Fruit'" in e for e in errors)
    fine = Listing.model_validate({**GOOD, "title": "Espresso from Nan", "keywords": ["espresso", "cup", "arabica"]})
    assert check_grounding(fine, evidence) == []
    about_the_photo = Listing.model_validate({**GOOD, "title": "The photo is likely espresso"})
    assert any("talks about the photo" in e for e in check_grounding(about_the_photo, evidence))


def test_repair_keeps_what_passes_and_fills_the_rest_from_the_labels() -> None:
    evidence = Evidence(ESPRESSO, "The photo most likely shows an espresso.", notes="")
    replies = [
        {"title": "Molten espresso", "description": "A delicious blend. An espresso in a cup.",
         "keywords": ["espresso", "barista", "espresso"], "categories": ["Fruit"]},
        {"title": "Espresso in a cup", "keywords": ["cups"]},
    ]
    listing, kept = build_listing(replies, evidence, max_keywords=5)
    assert listing.title == "Espresso in a cup"  # the first title that passes, from the second reply
    assert listing.description == "An espresso in a cup."  # the grounded sentence only
    assert listing.keywords[:2] == ["espresso", "cups"] and "barista" not in listing.keywords
    assert len(listing.keywords) <= 5 and "cup" not in listing.keywords  # "cup" is "cups" again
    assert listing.categories == ["Food & drinks", "Kitchen & dining"]
    assert kept == 3  # title, description, keywords (no category of the model's fits)
    assert_valid_and_grounded(listing, evidence, 5)


def test_the_template_needs_no_model_and_invents_nothing() -> None:
    labels = [Scored("missile", 657, 0.36)]
    evidence = Evidence(labels, "The photo probably shows a missile.", notes="Model rocket kit, 30 cm\nunused")
    listing, kept = build_listing([], evidence, max_keywords=8)
    assert kept == 0
    assert listing.title == "Missile – Model rocket kit, 30 cm"
    assert listing.description == ("The photo probably shows a missile. Seller's notes: Model rocket kit, 30 cm "
                                   "unused")
    assert listing.categories == ["Other"] and listing.keywords[0] == "missile" and len(listing.keywords) >= 3
    assert_valid_and_grounded(listing, evidence)


# --- the real model ----------------------------------------------------------------------------


@module_loop
async def test_grammar_constrained_generation_gives_schema_shaped_json(manager: ModelManager) -> None:
    model = await manager.get("smollm2-135m", "chat")
    llm = model.as_(ChatModel)
    assert llm.supports_json_schema
    messages = [{"role": "user", "content": "Write a JSON listing for a bunch of bananas: title, description, "
                                            "keywords, categories."}]
    schema = listing_schema(5)
    constrained = await model.run(llm.chat, messages, dataclasses.replace(LLM_PARAMS, json_schema=schema))
    # The grammar guarantees the structure (types, enum, counts, lengths); uniqueness is not in it.
    data = json.loads(constrained.text)
    assert set(data) == {"title", "description", "keywords", "categories"}
    assert 3 <= len(data["keywords"]) <= 5 and 1 <= len(data["categories"]) <= 3
    assert all(c in CATEGORIES for c in data["categories"]) and len(data["title"]) <= 80
    free = await model.run(llm.chat, messages, LLM_PARAMS)
    assert free.text != constrained.text  # the grammar did change what was sampled


@module_loop
async def test_a_listing_from_a_real_photo_is_valid_and_grounded(manager: ModelManager) -> None:
    result = await service(manager).write(photo("chelsea"), max_keywords=6)
    assert result.model == "smollm2-135m" and result.constrained
    assert 1 <= result.attempts <= 2 and result.method in ("llm-json", "repaired", "template")
    assert "cat" in result.labels[0].label
    evidence = Evidence(result.labels, result.description.text, "")
    assert_valid_and_grounded(result.listing, evidence, 6)
    assert result.listing.categories == ["Pets"]
    # Every rejected reply says why, attempt by attempt; an accepted first reply needs no retry.
    assert (result.method == "llm-json") == (result.errors == []) or result.attempts == 2
    assert all(e.startswith(("attempt 1: ", "attempt 2: ")) for e in result.errors)


@module_loop
async def test_a_reply_cut_short_is_retried_then_repaired(manager: ModelManager) -> None:
    """16 tokens cannot hold a listing: both replies are broken JSON, salvaged and repaired."""
    short = ListingService(DescribeService(manager), Router(manager),
                           params=GenerationParams(max_tokens=16, temperature=0.0, seed=0))
    result = await short.write(photo("coffee"))
    assert result.attempts == 2 and len(result.replies) == 2
    assert all(not r.rstrip().endswith("}") for r in result.replies)
    assert any("not valid JSON" in e for e in result.errors) and any("cut off at 16 tokens" in e
                                                                      for e in result.errors)
    assert result.method in ("repaired", "template")
    evidence = Evidence(result.labels, result.description.text, "")
    assert_valid_and_grounded(result.listing, evidence)
    salvaged = [salvage_fields(r) for r in result.replies]
    if result.method == "repaired":  # the salvaged title named the espresso
        assert result.listing.title in [s.get("title") for s in salvaged]


@module_loop
async def test_without_the_grammar_the_tiny_model_writes_bad_json_and_is_repaired(manager: ModelManager) -> None:
    result = await service(manager, constrain=False).write(photo("coffee"))
    assert not result.constrained and result.attempts == 2, result.replies
    assert result.method in ("repaired", "template") and result.errors
    assert_valid_and_grounded(result.listing, Evidence(result.labels, result.description.text, ""))
    assert "Food & drinks" in result.listing.categories and "espresso" in result.listing.keywords


@module_loop
async def test_thai_gets_an_english_listing_and_a_thai_note(manager: ModelManager) -> None:
    result = await service(manager).write(photo("coffee"), language="th", notes="from Nan province")
    assert result.requested_language == "th" and result.language == "en"
    assert any("ภาษาอังกฤษ" in n for n in result.notes)
    assert "espresso" in result.listing.title.lower() or "espresso" in result.listing.keywords


@module_loop
async def test_no_llm_installed_is_a_template(manager: ModelManager) -> None:
    result = await service(manager, llm=None).write(photo("coffee"), notes="250 ml")
    assert result.method == "template" and result.attempts == 0 and result.model is None
    assert result.listing.title == "Espresso – 250 ml" and result.listing.categories[0] == "Food & drinks"
    assert any("no local LLM" in n for n in result.notes)
