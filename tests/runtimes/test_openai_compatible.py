"""The OpenAI-compatible provider adapter, against a local server implementing OpenAI's documented
chat/completions API (tests/fixtures/fake_providers.py): no external provider is reachable here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kaset.errors import (
    InvalidRequest,
    ModelUnavailable,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.openai_compatible import OpenAICompatibleRuntime
from tests.fixtures.fake_providers import FakeServer, openai_app, provider_runtimes, serve

KEY = "sk-test-0123456789abcdef-secret"
ENV = "KASET_TEST_OPENAI_KEY"
PARAMS = GenerationParams(max_tokens=50, temperature=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with serve(openai_app(KEY)) as fake:
        yield fake


@pytest.fixture
def make(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., OpenAICompatibleRuntime]]:
    monkeypatch.setenv(ENV, KEY)
    with provider_runtimes("openai-compatible", OpenAICompatibleRuntime, ["chat"]) as build:
        yield lambda model="gpt-test", **params: build(
            f"remote-{model}", {"base_url": f"{server.base_url}/v1", "model": model, "api_key_env": ENV, **params})


def test_chat_sends_openai_json_and_maps_the_reply(make: Callable[..., OpenAICompatibleRuntime],
                                                   server: FakeServer) -> None:
    runtime = make()
    result = runtime.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
                          GenerationParams(max_tokens=50, temperature=0.2, top_p=0.9, stop=["\n"], seed=4))
    assert result.text == "Seen 0 image(s). You said: hello there"
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 11, 7)
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "gpt-test" and sent["body"]["messages"][0]["role"] == "system"
    assert {k: sent["body"][k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed", "stream")} == {
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["\n"], "seed": 4, "stream": False}


def test_chat_stream_parses_sse_and_usage(make: Callable[..., OpenAICompatibleRuntime]) -> None:
    runtime = make()
    chunks = list(runtime.chat_stream([{"role": "user", "content": "one two three"}], PARAMS))
    assert "".join(c.text for c in chunks) == "Seen 0 image(s). You said: one two three"
    assert len(chunks) > 3 and chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 8
    truncated = list(runtime.chat_stream([{"role": "user", "content": "a b c d"}], GenerationParams(max_tokens=2)))
    assert "".join(c.text for c in truncated) == "Seen 0" and truncated[-1].finish_reason == "length"


def test_completions_plain_and_streamed(make: Callable[..., OpenAICompatibleRuntime], server: FakeServer) -> None:
    runtime = make()
    assert runtime.complete("Once upon", PARAMS).text == "completed: Once upon"
    assert server.requests[-1]["path"] == "/v1/completions"
    assert "".join(c.text for c in runtime.complete_stream("Once upon", PARAMS)) == "completed: Once upon"


def test_describe_image_sends_a_data_url_part(make: Callable[..., OpenAICompatibleRuntime],
                                              server: FakeServer) -> None:
    runtime = make(vision=True)
    result = runtime.describe_image(b"\xff\xd8fakejpeg", "What is this?", PARAMS)
    assert result.text == "Seen 1 image(s). You said: What is this?"
    part = server.requests[-1]["body"]["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9hmYWtlanBlZw=="}}
    with pytest.raises(InvalidRequest, match="not configured to accept images"):
        make("text-only").describe_image(b"\xff\xd8", "What is this?", PARAMS)


def test_429_carries_retry_after(make: Callable[..., OpenAICompatibleRuntime]) -> None:
    with pytest.raises(UpstreamRateLimited) as caught:
        make("rate-limited").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 429 and caught.value.retry_after == 7
    assert caught.value.headers == {"Retry-After": "7"}
    with pytest.raises(UpstreamRateLimited):  # before the first chunk, so the gateway can still answer 429
        next(iter(make("rate-limited").chat_stream([{"role": "user", "content": "hi"}], PARAMS)))


def test_500_and_in_band_stream_errors_are_502(make: Callable[..., OpenAICompatibleRuntime]) -> None:
    with pytest.raises(UpstreamError) as caught:
        make("broken").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 502 and "HTTP 500" in caught.value.message
    stream = make("mid-stream-error").chat_stream([{"role": "user", "content": "hi"}], PARAMS)
    assert next(iter(stream)).text == "Seen"
    with pytest.raises(UpstreamError, match="crashed"):
        list(stream)


def test_timeout_is_504(make: Callable[..., OpenAICompatibleRuntime]) -> None:
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as caught:
        make("slow", timeout_s=0.5).chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 504 and time.perf_counter() - started < 2.5


def test_unreachable_server_is_502(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    spec = ModelSpec.model_validate({"id": "nowhere", "tasks": ["chat"], "runtime": "openai-compatible",
                                     "license": "x", "source": {"kind": "builtin"},
                                     "params": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}})
    runtime = OpenAICompatibleRuntime(spec, None)
    runtime.load()  # no key needed: local servers often have none
    try:
        with pytest.raises(UpstreamError) as caught:
            runtime.chat([{"role": "user", "content": "hi"}], PARAMS)
        assert caught.value.code == "upstream_unreachable"
    finally:
        runtime.unload()


def test_bad_key_never_reaches_messages_or_logs(make: Callable[..., OpenAICompatibleRuntime],
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-98765-topsecret"
    monkeypatch.setenv(ENV, wrong)
    runtime = make()
    with pytest.raises(UpstreamAuthFailed) as caught:
        runtime.chat([{"role": "user", "content": "hi"}], PARAMS)
    assert caught.value.status_code == 503 and "API key" in caught.value.message
    # The upstream's 401 echoes a masked key ("sk-***ret"); none of it is passed on.
    for text in (caught.value.message, str(caught.value), caplog.text):
        assert wrong not in text and wrong[:3] + "***" not in text and "topsecret" not in text
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(UpstreamError):
        make("broken").chat([{"role": "user", "content": "hi"}], PARAMS)
    assert KEY not in caplog.text


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def spec(**params: Any) -> ModelSpec:
        return ModelSpec.model_validate({"id": "m", "tasks": ["chat"], "runtime": "openai-compatible", "license": "x",
                                         "source": {"kind": "builtin"}, "params": params})

    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ModelUnavailable, match=f"{ENV}.*not set"):
        OpenAICompatibleRuntime(spec(base_url="http://x/v1", model="m", api_key_env=ENV), None).load()
    with pytest.raises(ModelUnavailable, match="do not put an API key"):
        OpenAICompatibleRuntime(spec(base_url="http://x/v1", model="m", api_key="sk-inline"), None).load()
    with pytest.raises(ModelUnavailable, match="base_url"):
        OpenAICompatibleRuntime(spec(model="m"), None).load()
    with pytest.raises(ModelUnavailable, match="not loaded"):
        OpenAICompatibleRuntime(spec(base_url="http://x/v1", model="m"), None).chat([], PARAMS)
