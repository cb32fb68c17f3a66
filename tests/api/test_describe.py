"""/v1/describe-image and chat with image parts, through the gateway with the real models.

The provider tests run a second gateway whose catalog folder (tmp_path) declares provider
models pointing at local servers that implement OpenAI's and Gemini's documented APIs
(tests/fixtures/fake_providers.py); no external provider is reachable here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kaset.config import Settings
from tests.fixtures.fake_providers import FakeServer, gemini_app, openai_app, serve
from tests.fixtures.gateway import ready_client
from tests.fixtures.images import jpeg, photo

KEY = "sk-api-describe-key-77"


def _data_url(name: str) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg(photo(name))).decode()


def _chat(model: str, text: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}], **extra}


# --- offline: the label path -------------------------------------------------------------------


def test_describe_multipart(client: TestClient) -> None:
    response = client.post("/v1/describe-image", files={"image": ("cat.jpg", jpeg(photo("chelsea")), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] in ("labels", "labels-template") and "cat" in body["description"].lower()
    assert body["classifier"] == "efficientnet-lite0" and body["labels"][0]["label"].endswith("cat")
    assert "not from seeing the image" in body["note"] and body["fallbacks"] == []
    assert "efficientnet-lite0" in response.headers["x-kaset-model"]


def test_describe_json_thai(client: TestClient) -> None:
    response = client.post("/v1/describe-image", json={"image": _data_url("coffee"), "language": "th"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "en" and body["requested_language"] == "th" and "espresso" in body["description"]
    assert "ภาษาอังกฤษ" in body["note"]


@pytest.mark.parametrize("payload,status", [
    ({"image": base64.b64encode(b"not an image at all" * 10).decode()}, 415),
    ({"image": "@@not base64@@"}, 400),
    ({"image": _data_url("coffee"), "language": "fr"}, 422),
])
def test_describe_bad_input(client: TestClient, payload: dict[str, str], status: int) -> None:
    response = client.post("/v1/describe-image", json=payload)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_describe_truncated_upload(client: TestClient) -> None:
    data = jpeg(photo("coffee"))
    response = client.post("/v1/describe-image", files={"image": ("x.jpg", data[: len(data) // 2], "image/jpeg")})
    assert response.status_code == 400 and "truncated" in response.json()["error"]["message"]


def test_chat_image_part_gets_a_label_based_answer(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=_chat("gpt-4o-mini", "What is this?", _data_url("chelsea")))
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    assert "cat" in content.lower() and "Label-based" in content
    assert response.headers["x-kaset-describe-method"] in ("labels", "labels-template")


def test_chat_image_part_streams(client: TestClient) -> None:
    body = _chat("smollm2-135m", "What is this?", _data_url("coffee"), stream=True,
                 stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "espresso" in text and "Label-based" in text and "usage" in chunks[-1]


def test_chat_remote_image_url_is_refused(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=_chat("smollm2-135m", "hi", "https://example.org/cat.jpg"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "remote_image_unsupported" and "no internet" in error["message"]


def test_chat_bad_image_part(client: TestClient) -> None:
    bad = "data:image/jpeg;base64," + base64.b64encode(b"garbage" * 20).decode()
    assert client.post("/v1/chat/completions", json=_chat("smollm2-135m", "hi", bad)).status_code == 415
    no_url = {"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    assert client.post("/v1/chat/completions", json=no_url).status_code == 400


# --- with providers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[FakeServer, FakeServer]]:
    with pytest.MonkeyPatch.context() as patch, serve(openai_app(KEY)) as openai, serve(gemini_app(KEY)) as gemini:
        patch.setenv("KASET_TEST_API_PROVIDER_KEY", KEY)
        yield openai, gemini


@pytest.fixture(scope="module")
def gateway(api_settings: Settings, providers: tuple[FakeServer, FakeServer],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A gateway whose catalog folder declares provider models, as docs/providers.md says."""
    openai, gemini = providers
    folder = tmp_path_factory.mktemp("provider-catalog")
    common = "license: test, source: {kind: builtin}, max_concurrent: 4"
    key = "api_key_env: KASET_TEST_API_PROVIDER_KEY"
    (folder / "providers.yaml").write_text(f"""
models:
  - {{id: vision-ok, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{openai.base_url}/v1", model: gpt-fake, {key}, vision: true}}}}
  - {{id: vision-broken, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{openai.base_url}/v1", model: broken, {key}, vision: true}}}}
  - {{id: gemini-vision, tasks: [chat], runtime: gemini, {common},
     params: {{base_url: "{gemini.base_url}", model: gemini-fake, {key}}}}}
  - {{id: gemini-limited, tasks: [chat], runtime: gemini, {common},
     params: {{base_url: "{gemini.base_url}", model: rate-limited, {key}}}}}
""")
    settings = Settings(data_dir=tmp_path_factory.mktemp("provider-data"), models_dir=api_settings.models_dir,
                        catalog_dirs=[folder], describe_models=["vision-broken", "gemini-vision"],
                        models=["efficientnet-lite0", "smollm2-135m"], auth_enabled=False)
    with ready_client(settings) as client:
        yield client


def test_provider_models_are_listed(gateway: TestClient) -> None:
    ids = {m["id"] for m in gateway.get("/v1/models").json()["data"]}
    assert {"vision-ok", "gemini-vision", "gemini-limited"} <= ids


def test_describe_uses_the_vision_provider_after_a_fallback(gateway: TestClient) -> None:
    response = gateway.post("/v1/describe-image", json={"image": _data_url("chelsea"), "prompt": "What animal?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "vision-model" and body["model"] == "gemini-vision"
    assert body["description"] == "Seen 1 image(s). You said: What animal?"
    assert [f["model"] for f in body["fallbacks"]] == ["vision-broken"]
    assert response.headers["x-kaset-model"] == "gemini-vision"


def test_chat_passes_image_parts_to_a_vision_provider(gateway: TestClient,
                                                      providers: tuple[FakeServer, FakeServer]) -> None:
    openai, _ = providers
    response = gateway.post("/v1/chat/completions", json=_chat("vision-ok", "What is it?", _data_url("chelsea")))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Seen 1 image(s). You said: What is it?"
    part = openai.requests[-1]["body"]["messages"][0]["content"][1]
    assert part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    remote = gateway.post("/v1/chat/completions", json=_chat("vision-ok", "And this?", "https://example.org/a.png"))
    assert remote.status_code == 200, remote.text
    assert openai.requests[-1]["body"]["messages"][0]["content"][1]["image_url"]["url"] == "https://example.org/a.png"


def test_chat_streams_from_gemini(gateway: TestClient) -> None:
    body = _chat("gemini-vision", "Stream it", _data_url("coffee"), stream=True)
    with gateway.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "Seen 1 image(s). You said: Stream it"


def test_provider_errors_through_the_gateway(gateway: TestClient) -> None:
    limited = gateway.post("/v1/chat/completions",
                           json={"model": "gemini-limited", "messages": [{"role": "user", "content": "hi"}]})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "upstream_rate_limited"
    assert limited.headers["retry-after"].isdigit()
    broken = gateway.post("/v1/chat/completions", json=_chat("vision-broken", "hi", _data_url("coffee")))
    assert broken.status_code == 502 and KEY not in broken.text
