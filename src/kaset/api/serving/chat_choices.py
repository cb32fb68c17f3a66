"""Several choices per request (`n`) and token log probabilities, in OpenAI's reply shapes.

A local model generates one reply at a time, so the `n` choices are generated in turn, each with
its own seed: with a request `seed`, choice i samples with seed + i (the choices differ, and
each is the same on every run); without, each draws its own. A provider gets the same: n calls.
Usage follows OpenAI: the prompt is counted once, the completion tokens of all choices add up.
A stream sends the choices one after another, each with its `index` (OpenAI's chunks may
interleave them; clients group by index either way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kaset.runtimes.base import Generation, GenerationChunk, GenerationParams, TokenLogprob


def choice_params(params: GenerationParams, n: int) -> list[GenerationParams]:
    if n == 1:
        return [params]
    return [params if i == 0 or params.seed is None else dataclasses.replace(params, seed=params.seed + i)
            for i in range(n)]


async def generate_choices(generate: Callable[[GenerationParams], Awaitable[Generation]], params: GenerationParams,
                           n: int) -> list[Generation]:
    return [await generate(choice) for choice in choice_params(params, n)]


async def stream_choices(open_stream: Callable[[GenerationParams], AsyncIterator[GenerationChunk]],
                         params: GenerationParams, n: int,
                         start_choice: Callable[[int], None]) -> AsyncIterator[GenerationChunk]:
    """The chunks of the n choices' streams in turn; `start_choice(i)` is called before choice i's
    first chunk, so the payload builder labels what follows."""
    for index, choice in enumerate(choice_params(params, n)):
        start_choice(index)
        chunks = open_stream(choice)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()


def choices_tokens(results: list[Generation]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a request's choices: the prompt once, as OpenAI counts it."""
    return max(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion (or a chunk's)."""
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.token_bytes,
                         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.token_bytes}
                                          for t in e.top_logprobs]}
                        for e in entries or []],
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any]:
    """`choices[i].logprobs` of a text completion: the legacy shape, parallel lists."""
    entries = entries or []
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": [e.text_offset for e in entries]}
