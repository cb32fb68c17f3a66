"""The Gemini provider adapter, against a local server implementing Gemini's documented REST API
(generateContent, streamGenerateContent?alt=sse, its error envelope; tests/fixtures/fake_providers.py).
No external provider is reachable here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from kaset.errors import InvalidRequest, UpstreamAuthFailed, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.gemini import GeminiRuntime
from tests.fixtures.fake_providers import FakeServer, gemini_app, provider_runtimes, serve

KEY = "AIzaTestKey-0123456789-secret"
ENV = "KASET_TEST_GEMINI_KEY"
PARAMS = GenerationParams(max_tokens=50, temperature=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with serve(gemini_app(KEY)) as fake:
        yield fake


@pytest.fixture
def make(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., GeminiRuntime]]:
    monkeypatch.setenv(ENV, KEY)
    with provider_runtimes("gemini", GeminiRuntime, ["chat"]) as build:
        yield lambda model="gemini-test", **params: build(
            f"g-{model}", {"base_url": server.base_url, "model": model, "api_key_env": ENV, **params})


def test_chat_maps_messages_to_contents(make: Callable[..., GeminiRuntime], server: FakeServer) -> None:
    runtime = make()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "how are"},
                {"role": "user", "content": "you"}]
    result = runtime.chat(messages, GenerationParams(max_tokens=40, temperature=0.3, top_p=0.8, stop=["END"], seed=2))
    assert result.text == "Seen 0 image(s). You said: hello how are you"
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 9, 9)
    sent = server.requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-test:generateContent"
    assert sent["headers"]["x-goog-api-key"] == KEY and "key=" not in sent["path"]
    body = sent["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    # Consecutive user turns are merged: Gemini wants user and model turns to alternate.
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"] == [{"text": "how are"}, {"text": "you"}]
    assert body["generationConfig"] == {"temperature": 0.3, "topP": 0.8, "candidateCount": 1, "maxOutputTokens": 40,
                                        "stopSequences": ["END"], "seed": 2}


def test_max_tokens_is_length(make: Callable[..., GeminiRuntime]) -> None:
    result = make().chat([{"role": "user", "content": "a b c"}], GenerationParams(max_tokens=2))
    assert result.text == "Seen 0" and result.finish_reason == "length"


def test_streaming(make: Callable[..., GeminiRuntime], server: FakeServer) -> None:
    chunks = list(make().chat_stream([{"role": "user", "content": "one two"}], PARAMS))
    assert server.requests[-1]["path"] == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    assert "".join(c.text for c in chunks) == "Seen 0 image(s). You said: one two"
    assert len(chunks) > 3 and chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (9, 7)
    assert "".join(c.text for c in make().complete_stream("once", PARAMS)).endswith("You said: once")


def test_images_become_inline_data(make: Callable[..., GeminiRuntime], server: FakeServer) -> None:
    runtime = make()
    result = runtime.describe_image(b"\xff\xd8fakejpeg", "What is this?", PARAMS)
    assert result.text == "Seen 1 image(s). You said: What is this?"
    parts = server.requests[-1]["body"]["contents"][0]["parts"]
    assert parts == [{"text": "What is this?"},
                     {"inline_data": {"mime_type": "image/jpeg", "data": "/9hmYWtlanBlZw=="}}]
    runtime.chat_multimodal([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.org/leaf.png"}}]}], PARAMS)
    assert server.requests[-1]["body"]["contents"][0]["parts"] == [
        {"file_data": {"mime_type": "image/png", "file_uri": "https://example.org/leaf.png"}}]
    with pytest.raises(InvalidRequest, match="input_audio"):
        runtime.chat_multimodal([{"role": "user", "content": [{"type": "input_audio"}]}], PARAMS)


def test_429_resource_exhausted_carries_retry_info(make: Callable[..., GeminiRuntime]) -> None:
    with pytest.raises(UpstreamRateLimited) as caught:
        make("rate-limited").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 429 and caught.value.retry_after == 13
    assert caught.value.headers == {"Retry-After": "13"} and "quota" in caught.value.message
    with pytest.raises(UpstreamRateLimited):
        next(iter(make("rate-limited").chat_stream([{"role": "user", "content": "hi"}], PARAMS)))


def test_500_is_502_and_timeout_is_504(make: Callable[..., GeminiRuntime]) -> None:
    with pytest.raises(UpstreamError) as caught:
        make("broken").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 502 and "internal error" in caught.value.message
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout):
        list(make("slow", timeout_s=0.5).chat_stream([{"role": "user", "content": "hi"}], PARAMS))
    assert time.perf_counter() - started < 2.5


def test_blocked_prompt_is_a_clear_400(make: Callable[..., GeminiRuntime]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        make("blocked").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.code == "content_filter" and "SAFETY" in caught.value.message


def test_bad_key_is_an_auth_failure_and_never_leaks(make: Callable[..., GeminiRuntime],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # includes the fake server's access log of every request line
    wrong = "AIzaWrongKey-555-topsecret"
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(UpstreamAuthFailed) as caught:  # Gemini says 400 API_KEY_INVALID, not 401
        make().chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 503
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(UpstreamError):
        make("broken").chat([{"role": "user", "content": "hi"}], PARAMS)
    make().chat([{"role": "user", "content": "hi"}], PARAMS)
    for secret in (wrong, KEY):
        assert secret not in caplog.text and secret not in caught.value.message
