"""llama.cpp with the real SmolLM2-135M-Instruct (Q4_1) model."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaset.errors import InvalidRequest
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.base import Generation, GenerationChunk, GenerationParams
from kaset.runtimes.llama_cpp import LlamaCppRuntime, wants_cjk

Installed = Callable[[str], tuple[ModelSpec, Path]]

QUESTION = [{"role": "user", "content": "Describe how a farmer grows rice, in three sentences."}]
GREEDY = GenerationParams(max_tokens=40, temperature=0.0, seed=7)


def make(installed: Installed, **params: object) -> LlamaCppRuntime:
    spec, folder = installed("smollm2-135m")
    if params:
        spec = spec.model_copy(update={"params": {**spec.params, **params}})
    runtime = LlamaCppRuntime(spec, folder)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def llm(installed: Installed) -> Iterator[LlamaCppRuntime]:
    runtime = make(installed)
    runtime.warmup()
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def greedy_reply(llm: LlamaCppRuntime) -> Generation:
    return llm.chat(QUESTION, GREEDY)


def params(**changes: Any) -> GenerationParams:
    return dataclasses.replace(GREEDY, **changes)


def joined(chunks: Iterator[GenerationChunk]) -> tuple[str, GenerationChunk, list[GenerationChunk]]:
    items = list(chunks)
    return "".join(c.text for c in items), items[-1], items


def test_context_length(llm: LlamaCppRuntime) -> None:
    assert llm.context_length == 2048


def test_chat_answers_with_usage(greedy_reply: Generation) -> None:
    assert greedy_reply.text.strip()
    assert "<|im_end|>" not in greedy_reply.text and "<|im_start|>" not in greedy_reply.text
    assert greedy_reply.prompt_tokens > 10
    assert 0 < greedy_reply.completion_tokens <= 40


def test_seed_and_temperature_zero_are_deterministic(llm: LlamaCppRuntime, greedy_reply: Generation) -> None:
    assert llm.chat(QUESTION, GREEDY) == greedy_reply
    sampled = params(temperature=0.9, seed=1234)
    assert llm.chat(QUESTION, sampled) == llm.chat(QUESTION, sampled)


def test_max_tokens_is_respected(llm: LlamaCppRuntime) -> None:
    reply = llm.chat(QUESTION, params(max_tokens=5))
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 5)
    assert reply.text


def test_stop_strings_end_the_reply(llm: LlamaCppRuntime, greedy_reply: Generation) -> None:
    words = greedy_reply.text.split()
    assert len(words) > 4
    stop = words[3]
    reply = llm.chat(QUESTION, params(stop=["<never>", stop]))
    assert reply.finish_reason == "stop"
    assert reply.text == greedy_reply.text[: greedy_reply.text.index(stop)]
    assert stop not in reply.text
    assert reply.completion_tokens < greedy_reply.completion_tokens
    # Streamed, the stop string is held back and never leaks out in a chunk.
    text, last, _ = joined(llm.chat_stream(QUESTION, params(stop=[stop])))
    assert (text, last.finish_reason) == (reply.text, "stop")


def test_stream_adds_up_to_the_reply(llm: LlamaCppRuntime, greedy_reply: Generation) -> None:
    text, last, items = joined(llm.chat_stream(QUESTION, GREEDY))
    assert text == greedy_reply.text
    assert len(items) > 5  # pieces, not one lump
    assert all(c.finish_reason is None for c in items[:-1])
    assert (last.text, last.finish_reason) == ("", greedy_reply.finish_reason)
    assert (last.prompt_tokens, last.completion_tokens) == (greedy_reply.prompt_tokens, greedy_reply.completion_tokens)


def test_text_completion(llm: LlamaCppRuntime) -> None:
    reply = llm.complete("The farmer plants rice in", params(max_tokens=8))
    assert reply.text.strip()
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 8)
    assert 5 <= reply.prompt_tokens <= 8
    text, last, _ = joined(llm.complete_stream("The farmer plants rice in", params(max_tokens=8)))
    assert (text, last.completion_tokens, last.prompt_tokens) == (reply.text, 8, reply.prompt_tokens)


def test_over_long_prompt_is_refused_before_streaming(llm: LlamaCppRuntime) -> None:
    messages = [{"role": "user", "content": "rice " * 3000}]
    with pytest.raises(InvalidRequest) as err:
        llm.chat_stream(messages, GREEDY)  # not iterated: the call itself refuses
    assert "2048" in err.value.message and "tokens" in err.value.message
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequest):
        llm.complete("rice " * 3000, GREEDY)
    with pytest.raises(InvalidRequest):
        llm.chat([], GREEDY)


def test_max_tokens_fills_the_rest_of_the_context(installed: Installed) -> None:
    small = make(installed, n_ctx=256)
    try:
        assert small.context_length == 256
        # A long prompt leaves little room, so filling the context stays quick.
        prompt = "The farmer plants rice. " * 38
        reply = small.complete(prompt, params(max_tokens=None, temperature=0.0))
        assert reply.prompt_tokens > 180
        if reply.finish_reason == "length":
            assert reply.prompt_tokens + reply.completion_tokens == 256
        clamped = small.complete(prompt, params(max_tokens=10_000, temperature=0.0))
        assert clamped == reply
    finally:
        small.unload()


def test_concurrent_calls_are_serialised(llm: LlamaCppRuntime, greedy_reply: Generation) -> None:
    results: list[Generation] = []

    def ask() -> None:
        results.append(llm.chat(QUESTION, GREEDY))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [greedy_reply, greedy_reply]


@pytest.mark.parametrize(("text", "cjk"), [
    ("Name the capital of France.", False),
    ("เมืองหลวงของประเทศไทยคืออะไร", False),
    ("Prices rose 5% — about €3… → ‘fine’", False),  # general punctuation and symbols are not CJK
    ("早上好", True),
    ("こんにちは", True),
    ("안녕하세요", True),
    ("Bangkok。", True),
    ("ｆｕｌｌｗｉｄｔｈ", True),
    ("Translate 'good morning' into Japanese.", True),
    ("How do you say rice in Korean?", True),
    ("แปลเป็นภาษาจีนให้หน่อย", True),
])
def test_a_conversation_wants_cjk_when_it_has_or_names_it(text: str, cjk: bool) -> None:
    assert wants_cjk(text) is cjk


def test_the_script_guard_leaves_an_english_reply_alone(installed: Installed, llm: LlamaCppRuntime,
                                                        greedy_reply: Generation) -> None:
    # SmolLM2's vocabulary has a few hundred CJK tokens; forbidding them changes no English reply.
    assert 0 < len(llm.cjk_tokens) < 1000
    unguarded = make(installed, script_guard=False)
    try:
        assert len(unguarded.cjk_tokens) == 0
        assert unguarded.chat(QUESTION, GREEDY) == greedy_reply
    finally:
        unguarded.unload()
