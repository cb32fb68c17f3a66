"""Photo description: the label path with the real classifier and LLM, and vision providers with
fallback. The providers are local servers implementing OpenAI's and Gemini's documented APIs
(tests/fixtures/fake_providers.py), declared through a catalog folder as an operator would."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from kaset.pipelines.describe import DescribeService, check_description, template_sentence
from kaset.pipelines.diagnose import Scored
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from tests.fixtures.fake_providers import FakeServer, gemini_app, openai_app, serve
from tests.fixtures.images import photo

module_loop = pytest.mark.asyncio(loop_scope="module")
KEY = "sk-describe-test-key-42"

CATALOG = """
models:
  - {{id: vision-ok, tasks: [chat], runtime: openai-compatible, license: test, source: {{kind: builtin}},
     max_concurrent: 4, params: {{base_url: "{openai}/v1", model: gpt-fake, api_key_env: KASET_TEST_PROVIDER_KEY,
     vision: true}}}}
  - {{id: vision-broken, tasks: [chat], runtime: openai-compatible, license: test, source: {{kind: builtin}},
     params: {{base_url: "{openai}/v1", model: broken, api_key_env: KASET_TEST_PROVIDER_KEY, vision: true}}}}
  - {{id: text-only, tasks: [chat], runtime: openai-compatible, license: test, source: {{kind: builtin}},
     params: {{base_url: "{openai}/v1", model: gpt-fake, api_key_env: KASET_TEST_PROVIDER_KEY}}}}
  - {{id: gemini-vision, tasks: [chat], runtime: gemini, license: test, source: {{kind: builtin}},
     params: {{base_url: "{gemini}", model: gemini-fake, api_key_env: KASET_TEST_PROVIDER_KEY}}}}
  - {{id: gemini-limited, tasks: [chat], runtime: gemini, license: test, source: {{kind: builtin}},
     params: {{base_url: "{gemini}", model: rate-limited, api_key_env: KASET_TEST_PROVIDER_KEY}}}}
"""


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[FakeServer, FakeServer]]:
    with pytest.MonkeyPatch.context() as patch, serve(openai_app(KEY)) as openai, serve(gemini_app(KEY)) as gemini:
        patch.setenv("KASET_TEST_PROVIDER_KEY", KEY)
        yield openai, gemini


@pytest.fixture(scope="module")
async def manager(providers: tuple[FakeServer, FakeServer], installed: Callable[[str], object], models_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelManager]:
    installed("efficientnet-lite0")
    installed("smollm2-135m")
    folder = tmp_path_factory.mktemp("catalog")
    openai, gemini = providers
    (folder / "providers.yaml").write_text(CATALOG.format(openai=openai.base_url, gemini=gemini.base_url))
    manager = ModelManager(Catalog.load([folder]), ModelRepository(models_dir))
    yield manager
    await manager.close()


@module_loop
async def test_label_path_on_a_cat(manager: ModelManager) -> None:
    description = await DescribeService(manager).describe(photo("chelsea"))
    assert description.method == "labels" and description.model == "smollm2-135m"
    assert "cat" in description.text.lower()
    assert description.classifier == "efficientnet-lite0" and "cat" in description.labels[0].label
    assert "not from seeing the image" in description.note and description.fallbacks == []


@module_loop
async def test_thai_offline_is_english_with_a_thai_note(manager: ModelManager) -> None:
    description = await DescribeService(manager).describe(photo("coffee"), language="th")
    assert description.language == "en" and description.requested_language == "th"
    assert "espresso" in description.text and "ภาษาอังกฤษ" in description.note
    assert "Only English is available offline" in description.note


@module_loop
async def test_an_llm_sentence_off_the_labels_becomes_the_template(manager: ModelManager) -> None:
    # The real LLM words the rocket's labels as "a drilling platform" (the third label): refused.
    description = await DescribeService(manager).describe(photo("rocket"))
    assert description.method == "labels-template" and description.model is None
    assert description.text.startswith("The photo probably shows a missile")
    assert description.llm_rejected and "missile" in description.llm_rejected


def test_checks_and_template() -> None:
    labels = [Scored("espresso", 967, 0.96)]
    assert check_description("The photo is likely espresso.", labels, None) is None
    invented = "The photo shows a sleek espresso machine and a woman in a bright red dress."
    assert "woman" in (check_description(invented, labels, None) or "")
    assert check_description("", labels, None) == "it was empty"
    assert template_sentence(labels) == "The photo most likely shows an espresso."
    unsure = [Scored("bobsled", 0, 0.13), Scored("go-kart", 1, 0.07)]
    assert template_sentence(unsure).startswith("It is unclear what the photo shows")


@module_loop
async def test_vision_provider_answers_first(manager: ModelManager, providers: tuple[FakeServer, FakeServer]) -> None:
    openai, _ = providers
    image = photo("chelsea")
    description = await DescribeService(manager, ["vision-ok"]).describe(image, prompt="Is there a cat?")
    assert description.method == "vision-model" and description.model == "vision-ok"
    assert description.text == "Seen 1 image(s). You said: Is there a cat?" and description.labels == []
    url = openai.requests[-1]["body"]["messages"][0]["content"][1]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/jpeg;base64,"))))
    assert sent.format == "JPEG" and sent.size == (image.shape[1], image.shape[0])


@module_loop
async def test_thai_goes_to_the_provider(manager: ModelManager) -> None:
    description = await DescribeService(manager, ["gemini-vision"]).describe(photo("coffee"), language="th")
    assert description.method == "vision-model" and description.language == "th"
    assert "อธิบายภาพนี้" in description.text


@module_loop
async def test_fallback_chain_to_the_next_provider(manager: ModelManager) -> None:
    service = DescribeService(manager, ["vision-broken", "text-only", "gemini-limited", "gemini-vision"])
    description = await service.describe(photo("chelsea"))
    assert description.method == "vision-model" and description.model == "gemini-vision"
    errors = {f.model: f.error for f in description.fallbacks}
    assert list(errors) == ["vision-broken", "text-only", "gemini-limited"]
    assert "HTTP 500" in errors["vision-broken"] and "cannot take images" in errors["text-only"]
    assert "Retry after 13 s" in errors["gemini-limited"]


@module_loop
async def test_fallback_chain_ends_on_labels(manager: ModelManager) -> None:
    service = DescribeService(manager, ["vision-broken", "no-such-model", "gemini-limited"])
    description = await service.describe(photo("chelsea"))
    assert description.method in ("labels", "labels-template") and "cat" in description.text.lower()
    assert [f.model for f in description.fallbacks] == ["vision-broken", "no-such-model", "gemini-limited"]
    assert "does not exist" in description.fallbacks[1].error
    assert all(KEY not in f.error for f in description.fallbacks)
