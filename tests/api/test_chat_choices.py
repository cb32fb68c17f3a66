"""seed, stop, n > 1, logprobs/top_logprobs and the penalties on SmolLM2-135M (llama.cpp), through
the gateway, plain and streamed, in OpenAI's shapes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chat_gateway import ChatGateway, chat_gateway

QUESTION = [{"role": "user", "content": "Write one sentence about rice farming."}]


@pytest.fixture(scope="module")
def gw(installed: Callable[[str], object], models_dir: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatGateway]:
    with chat_gateway(installed, models_dir, tmp_path_factory.mktemp("chat-choices")) as gateway:
        yield gateway


def _chat(gw: ChatGateway, **fields: Any) -> dict[str, Any]:
    body = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 24, **fields}
    response = gw.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _stream(gw: ChatGateway, path: str = "/v1/chat/completions", **fields: Any) -> list[dict[str, Any]]:
    body = {"model": "smollm2-135m", "max_tokens": 24, "stream": True, **fields}
    if path.endswith("chat/completions"):
        body.setdefault("messages", QUESTION)
    with gw.client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def _texts(events: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events:
        for choice in event.get("choices", []):
            piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    return texts


def _content(reply: dict[str, Any], index: int = 0) -> str:
    return str(reply["choices"][index]["message"]["content"])


def test_a_seed_repeats_a_sampled_reply(gw: ChatGateway) -> None:
    first = _content(_chat(gw, temperature=1.0, seed=11))
    assert _content(_chat(gw, temperature=1.0, seed=11)) == first
    others = {_content(_chat(gw, temperature=1.0, seed=seed)) for seed in (12, 13, 14)}
    assert others - {first}, "three other seeds all gave the same reply"
    # OpenAI seeds are any integer; llama.cpp's are 32-bit, with 0xFFFFFFFF meaning "random".
    for seed in (-1, 2**32 - 1, 2**40 + 5):
        assert _content(_chat(gw, temperature=1.0, seed=seed)) == _content(_chat(gw, temperature=1.0, seed=seed))


def test_stop_strings_cut_the_reply(gw: ChatGateway) -> None:
    whole = _content(_chat(gw, temperature=0, max_tokens=40))
    word = whole.split()[3]
    cut = _chat(gw, temperature=0, max_tokens=40, stop=word)
    assert _content(cut) == whole[:whole.index(word)] and cut["choices"][0]["finish_reason"] == "stop"
    listed = _content(_chat(gw, temperature=0, max_tokens=40, stop=["no such words", word]))
    assert listed == whole[:whole.index(word)]
    streamed = _texts(_stream(gw, temperature=0, max_tokens=40, stop=[word]))
    assert streamed == {0: whole[:whole.index(word)]}
    five = gw.client.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": QUESTION,
                                                         "stop": ["a", "b", "c", "d", "e"]})
    assert five.status_code == 400 and five.json()["error"]["param"] == "stop"


def test_n_choices_each_with_its_seed(gw: ChatGateway) -> None:
    reply = _chat(gw, temperature=1.0, seed=21, n=3)
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    texts = [_content(reply, i) for i in range(3)]
    # Choice i is what seed 21 + i gives alone: each is reproducible.
    singles = [_chat(gw, temperature=1.0, seed=21 + i) for i in range(3)]
    assert texts == [_content(single) for single in singles]
    assert len(set(texts)) > 1
    usage = reply["usage"]
    assert usage["prompt_tokens"] == singles[0]["usage"]["prompt_tokens"]  # the prompt counts once
    assert usage["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in singles)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_choices_streamed(gw: ChatGateway) -> None:
    events = _stream(gw, temperature=1.0, seed=21, n=3, stream_options={"include_usage": True})
    plain = _chat(gw, temperature=1.0, seed=21, n=3)
    assert _texts(events) == {i: _content(plain, i) for i in range(3)}
    roles = [c["index"] for e in events for c in e["choices"] if c["delta"].get("role") == "assistant"]
    finishes = [c["index"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert roles == finishes == [0, 1, 2]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]


def test_n_is_bounded(gw: ChatGateway) -> None:
    response = gw.client.post("/v1/chat/completions", json={"model": "echo", "messages": QUESTION, "n": 9})
    assert response.status_code == 422 and response.json()["error"]["param"] == "n"
    echoed = gw.client.post("/v1/chat/completions", json={"model": "echo", "messages": QUESTION, "n": 2}).json()
    assert [_content(echoed, i) for i in range(2)] == [QUESTION[0]["content"]] * 2


def test_logprobs_in_openais_shape(gw: ChatGateway) -> None:
    reply = _chat(gw, temperature=0, logprobs=True, top_logprobs=3)
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        # Greedy: the sampled token is the likeliest one.
        assert (tops[0]["token"], tops[0]["logprob"]) == (entry["token"], entry["logprob"])
    plain = _chat(gw, temperature=0)
    assert plain["choices"][0]["logprobs"] is None and _content(plain) == choice["message"]["content"]
    without_top = _chat(gw, temperature=0, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in without_top] == [e["token"] for e in content]
    assert all(e["top_logprobs"] == [] for e in without_top)


def test_logprobs_streamed_line_up_with_the_text(gw: ChatGateway) -> None:
    plain = _chat(gw, temperature=0, logprobs=True, top_logprobs=2)
    events = _stream(gw, temperature=0, logprobs=True, top_logprobs=2)
    streamed = [entry for e in events for c in e["choices"] if c.get("logprobs") for entry in c["logprobs"]["content"]]
    assert streamed == plain["choices"][0]["logprobs"]["content"]
    for event in events:
        for choice in event["choices"]:
            if choice["delta"].get("content"):
                assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["delta"]["content"]


def test_logprobs_with_a_schema_and_n(gw: ChatGateway) -> None:
    schema = {"type": "object", "properties": {"crop": {"type": "string", "maxLength": 12}}, "required": ["crop"],
              "additionalProperties": False}
    reply = _chat(gw, temperature=0.8, seed=3, n=2, logprobs=True, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "crop", "schema": schema}})
    for choice in reply["choices"]:
        assert "crop" in json.loads(choice["message"]["content"])
        assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["message"]["content"]


def test_refusals(gw: ChatGateway) -> None:
    def error(**fields: Any) -> dict[str, Any]:
        response = gw.client.post("/v1/chat/completions", json={"messages": QUESTION, **fields})
        assert response.status_code == 400, response.text
        return response.json()["error"]  # type: ignore[no-any-return]

    assert error(model="echo", logprobs=True)["param"] == "logprobs"
    assert error(model="prov-chat", logprobs=True)["param"] == "logprobs"
    assert error(model="smollm2-135m", top_logprobs=2)["param"] == "top_logprobs"
    assert error(model="echo", presence_penalty=0.5)["param"] == "presence_penalty"
    assert gw.client.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": QUESTION,
                                                        "logprobs": True, "top_logprobs": 21}).status_code == 422


def test_penalties(gw: ChatGateway) -> None:
    def continued(**fields: Any) -> str:
        body = {"model": "smollm2-135m", "prompt": "rice, rice, rice, rice, rice,", "max_tokens": 24, "temperature": 0}
        return str(gw.client.post("/v1/completions", json={**body, **fields}).json()["choices"][0]["text"])

    plain = continued()
    assert plain.count("rice") >= 2  # left alone, it goes on repeating itself for a while
    assert continued(frequency_penalty=2.0).count("rice") < plain.count("rice")
    assert continued(presence_penalty=2.0).count("rice") < plain.count("rice")
    passed_on = gw.client.post("/v1/chat/completions", json={"model": "prov-chat", "messages": QUESTION,
                                                             "frequency_penalty": 0.5, "presence_penalty": -0.5})
    assert passed_on.status_code == 200
    sent = gw.upstream.requests[-1]["body"]
    assert (sent["frequency_penalty"], sent["presence_penalty"]) == (0.5, -0.5)


def test_openai_sdk_reads_choices_and_logprobs(gw: ChatGateway) -> None:
    completion = gw.sdk().chat.completions.create(model="smollm2-135m", messages=QUESTION,  # type: ignore[arg-type]
                                                  n=2, seed=5, temperature=1.0, max_tokens=12, logprobs=True,
                                                  top_logprobs=2)
    assert len(completion.choices) == 2
    entry = completion.choices[1].logprobs.content[0]  # type: ignore[union-attr,index]
    assert len(entry.top_logprobs) == 2 and entry.bytes


def test_completions_n_logprobs_and_echo(gw: ChatGateway) -> None:
    body = {"model": "smollm2-135m", "prompt": "Rice is a", "max_tokens": 8, "temperature": 0}
    reply = gw.client.post("/v1/completions", json={**body, "n": 2, "logprobs": 2}).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    logprobs = reply["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == reply["choices"][0]["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(logprobs["text_offset"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"]) and logprobs["text_offset"][0] == 0
    streamed = _stream(gw, "/v1/completions", **body, logprobs=1)
    assert _texts(streamed) == {0: reply["choices"][0]["text"]}
    assert [t for e in streamed for t in (e["choices"][0]["logprobs"] or {}).get("tokens", [])] == logprobs["tokens"]
    # echo puts the prompt first, streamed too.
    echoed = gw.client.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == "Rice is a" + reply["choices"][0]["text"]
    assert _texts(_stream(gw, "/v1/completions", **body, echo=True)) == {0: echoed}
    refused = gw.client.post("/v1/completions", json={**body, "echo": True, "logprobs": 1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
