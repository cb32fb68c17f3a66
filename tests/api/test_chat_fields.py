"""Every OpenAI request field is honoured, accepted as harmless, or refused with a 400 naming it
(kaset.api.serving.chat_params): nothing is dropped silently."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

MESSAGES = [{"role": "user", "content": "rice grows in water"}]


def _chat(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "echo", "messages": MESSAGES, **fields})


def _refused(response: Any, param: str, code: str = "unsupported_parameter") -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert param in error["message"]
    return str(error["message"])


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"store": True}, "store"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"moderation": {"mode": "block"}}, "moderation"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
])
def test_refused_chat_fields(client: TestClient, fields: dict[str, Any], param: str) -> None:
    _refused(_chat(client, **fields), param)


def test_tools_say_not_yet(client: TestClient) -> None:
    message = _refused(_chat(client, tools=[{"type": "function", "function": {"name": "f"}}]), "tools")
    assert "not support tool calling yet" in message


def test_unknown_fields_are_refused_like_openai(client: TestClient) -> None:
    message = _refused(_chat(client, max_token=5), "max_token", code="unknown_parameter")
    assert "Unrecognized request argument" in message
    _refused(_chat(client, top_k=5), "top_k", code="unknown_parameter")  # a vLLM extra, not OpenAI's
    response = client.post("/v1/completions", json={"model": "echo", "prompt": "rice", "min_p": 0.1})
    _refused(response, "min_p", code="unknown_parameter")


def test_stream_options_are_checked(client: TestClient) -> None:
    response = _chat(client, stream=True, stream_options={"include_usage": True, "include_obfuscation": False})
    assert response.status_code == 200
    assert _chat(client, stream=True, stream_options={"chunk_size": 3}).status_code == 422


@pytest.mark.parametrize("fields", [
    {"user": "farmer-7", "safety_identifier": "abc", "metadata": {"app": "kaset"}},
    {"store": False, "service_tier": "auto", "reasoning_effort": "none"},
    {"parallel_tool_calls": False, "tool_choice": "none", "tools": []},
    {"tool_choice": "auto", "function_call": "none"},
    {"prompt_cache_key": "k1", "prompt_cache_retention": "in_memory", "prediction": {"type": "content",
                                                                                     "content": "rice"}},
    {"response_format": {"type": "text"}, "logprobs": False, "top_logprobs": 0, "n": 1},
    {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}},
])
def test_harmless_fields_are_accepted(client: TestClient, fields: dict[str, Any]) -> None:
    response = _chat(client, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "rice grows in water"


@pytest.mark.parametrize(("fields", "param"), [
    ({"suffix": "and so on"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
])
def test_refused_completion_fields(client: TestClient, fields: dict[str, Any], param: str) -> None:
    response = client.post("/v1/completions", json={"model": "echo", "prompt": "rice grows", **fields})
    _refused(response, param)


def test_completion_harmless_fields(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "echo", "prompt": "rice grows", "best_of": 1,
                                                    "suffix": "", "user": "u", "echo": False})
    assert response.status_code == 200, response.text


def _sdk(client: TestClient) -> openai.OpenAI:
    # TestClient is an httpx.Client: the SDK's requests go through the app in process, headers and all.
    key = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def test_openai_sdk_defaults_pass(client: TestClient) -> None:
    sdk = _sdk(client)
    reply = sdk.chat.completions.create(model="echo", messages=MESSAGES)
    assert reply.choices[0].message.content == "rice grows in water"
    stream = sdk.chat.completions.create(model="echo", messages=MESSAGES, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "rice grows in water"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    completion = sdk.completions.create(model="echo", prompt="rice grows")
    assert completion.choices[0].text == "rice grows"


def test_openai_sdk_sees_the_refusal(client: TestClient) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        _sdk(client).chat.completions.create(model="echo", messages=MESSAGES,
                                             tools=[{"type": "function", "function": {"name": "f"}}])
    assert raised.value.param == "tools"
