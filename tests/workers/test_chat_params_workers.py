"""The chat parameters that travel to a kaset worker (response_format's schema, what a model
honours) do so: a gateway with no models of its own in front of a real worker serving SmolLM2-135M
and echo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.worker_process import worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, wait_replica

SCHEMA = {"type": "object", "properties": {"crop": {"type": "string", "maxLength": 20},
                                           "weeks": {"type": "integer"}},
          "required": ["crop", "weeks"], "additionalProperties": False}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, installed: Any) -> Iterator[str]:
    installed("smollm2-135m")
    tmp = tmp_path_factory.mktemp("chat-workers")
    with worker_process(tmp, "echo,smollm2-135m", {"KASET_MODELS_DIR": str(models_dir),
                                                    "KASET_WORKER_TOKEN": TOKEN}) as worker:
        (tmp / "gw").mkdir()
        with gateway_process(tmp / "gw", gateway_env(models_dir, [worker.url])) as base:
            wait_replica(base, worker.url)
            yield base


def _chat(gateway: str, model: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{gateway}/v1/chat/completions", headers=auth(), timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "How long does rice take to grow?"}],
        "temperature": 0, "max_tokens": 80, **fields})


def test_response_format_reaches_the_worker(gateway: str) -> None:
    response = _chat(gateway, "smollm2-135m", response_format={
        "type": "json_schema", "json_schema": {"name": "growth", "schema": SCHEMA, "strict": True}})
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["choices"][0]["message"]["content"]), SCHEMA)


def test_what_a_remote_model_honours_is_known_to_the_gateway(gateway: str) -> None:
    refused = _chat(gateway, "echo", response_format={"type": "json_object"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"
    bad_schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    refused = _chat(gateway, "smollm2-135m", response_format={
        "type": "json_schema", "json_schema": {"name": "n", "schema": bad_schema}})
    assert refused.status_code == 400 and "'minimum'" in refused.json()["error"]["message"]


def test_logprobs_choices_and_penalties_cross_the_wire(gateway: str) -> None:
    fields = {"n": 2, "seed": 9, "temperature": 0.9, "logprobs": True, "top_logprobs": 2, "frequency_penalty": 0.5,
              "max_tokens": 12}
    reply = _chat(gateway, "smollm2-135m", **fields).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for choice in reply["choices"]:
        content = choice["logprobs"]["content"]
        assert "".join(e["token"] for e in content) == choice["message"]["content"]
        assert all(len(e["top_logprobs"]) == 2 for e in content)
    again = _chat(gateway, "smollm2-135m", **fields).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in reply["choices"]]  # the seeds held
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", headers=auth(), timeout=60, json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "How long does rice take to grow?"}],
            "stream": True, **fields}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    streamed: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for event in events:
        for choice in event["choices"]:
            streamed[choice["index"]].extend((choice.get("logprobs") or {}).get("content") or [])
    assert streamed == {i: c["logprobs"]["content"] for i, c in enumerate(reply["choices"])}
