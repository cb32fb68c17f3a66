"""The weightless echo model: exact, deterministic and cheap."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kaset.errors import InvalidRequest
from kaset.registry.catalog import Catalog
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.echo import EchoRuntime

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": "  The farmer plants rice.\nThen he waits. "},
]


@pytest.fixture(scope="module")
def echo(catalog: Catalog) -> EchoRuntime:
    runtime = EchoRuntime(catalog.resolve("echo"), None)
    runtime.load()
    runtime.warmup()
    return runtime


def test_chat_answers_with_the_last_user_message(echo: EchoRuntime) -> None:
    reply = echo.chat(MESSAGES, GenerationParams())
    assert reply.text == MESSAGES[-1]["content"]
    assert reply.finish_reason == "stop"
    assert reply.prompt_tokens == 2 + 2 + 2 + 7
    assert reply.completion_tokens == 7


def test_stream_is_word_by_word_and_adds_up_to_the_reply(echo: EchoRuntime) -> None:
    chunks = list(echo.chat_stream(MESSAGES, GenerationParams()))
    assert "".join(c.text for c in chunks) == MESSAGES[-1]["content"]
    words = [c.text for c in chunks[:-1]]
    assert [w.strip() for w in words if w.strip()] == MESSAGES[-1]["content"].split()
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.text, last.finish_reason, last.completion_tokens, last.prompt_tokens) == ("", "stop", 7, 13)


def test_complete_returns_the_prompt(echo: EchoRuntime) -> None:
    reply = echo.complete("one two three", GenerationParams())
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("one two three", 3, 3)
    streamed = list(echo.complete_stream("one two three", GenerationParams()))
    assert [c.text for c in streamed] == ["one", " two", " three", ""]


def test_max_tokens_and_stop(echo: EchoRuntime) -> None:
    cut = echo.complete("one two three four", GenerationParams(max_tokens=2))
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("one two", "length", 2)
    stopped = echo.complete("one two three four", GenerationParams(stop=["four", "thr"]))
    assert (stopped.text, stopped.finish_reason) == ("one two ", "stop")


def test_chat_without_a_user_message_is_empty(echo: EchoRuntime) -> None:
    reply = echo.chat([{"role": "system", "content": "hi there"}], GenerationParams())
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("", 2, 0)
    assert [c.text for c in echo.chat_stream([], GenerationParams())] == [""]


def test_embeddings_are_deterministic_unit_vectors(echo: EchoRuntime) -> None:
    result = echo.embed(["rice", "ข้าว", "rice", "the stock market"])
    vectors = result.vectors
    assert vectors.shape == (4, echo.dimensions) == (4, 8)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    assert result.prompt_tokens == 1 + 1 + 1 + 3
    # Same vector in a later call (and in another process: blake2b, not hash()).
    np.testing.assert_array_equal(echo.embed(["rice"]).vectors[0], vectors[0])


def test_empty_embedding_input_is_refused(echo: EchoRuntime) -> None:
    with pytest.raises(InvalidRequest):
        echo.embed([])
    with pytest.raises(InvalidRequest):
        echo.embed(["fine", ""])


def test_is_cheap(echo: EchoRuntime) -> None:
    params = GenerationParams()
    started = time.process_time()
    for _ in range(5_000):
        echo.chat(MESSAGES, params)
        echo.embed(["The farmer plants rice."])
    per_call = (time.process_time() - started) / 10_000
    # Tens of microseconds in practice; the bound only catches a gross regression.
    assert per_call < 200e-6
