"""The sentence speaker shared by chat's spoken replies and the voice assistant: text flows on
while the voice speaks, sentences are spoken in order, errors and early closes stop both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kaset.pipelines.speaking import Spoken, WritingDone, Written, speak_while_writing


async def _pieces(texts: list[str], gap_s: float = 0.0) -> AsyncIterator[str]:
    for text in texts:
        await asyncio.sleep(gap_s)
        yield text


def _words(text: str) -> list[str]:
    return [text.strip()] if text.strip().endswith(".") else []


async def test_text_never_waits_for_the_voice() -> None:
    async def slow_voice(sentence: str) -> str:
        await asyncio.sleep(0.05)
        return sentence.upper()

    kinds = []
    async for event in speak_while_writing(_pieces(["One.", "Two.", "Three."]), _words, list, slow_voice):
        kinds.append(type(event).__name__ if not isinstance(event, Spoken) else f"Spoken{event.index}")
    # All text and the end of writing come before the first sentence is spoken (0.05 s each).
    assert kinds[:4] == ["Written", "Written", "Written", "WritingDone"]
    assert kinds[4:] == ["Spoken0", "Spoken1", "Spoken2"]


async def test_sentences_keep_their_order_and_skipped_ones_keep_the_count() -> None:
    async def voice(sentence: str) -> str | None:
        return None if sentence == "Skip." else sentence

    spoken = [(e.index, e.audio) async for e in speak_while_writing(_pieces(["A.", "Skip.", "C."]), _words,
                                                                      lambda: ["tail"], voice)
              if isinstance(e, Spoken)]
    assert spoken == [(0, "A."), (2, "C."), (3, "tail")]


async def test_without_a_voice_only_the_text_comes() -> None:
    events = [e async for e in speak_while_writing(_pieces(["A.", "B."]), _words, list, None)]
    assert [type(e) for e in events] == [Written, Written, WritingDone]


async def test_an_error_of_the_voice_is_raised_after_the_text_before_it() -> None:
    async def broken(sentence: str) -> str:
        raise RuntimeError("synthesis failed")

    seen = []
    with pytest.raises(RuntimeError, match="synthesis failed"):
        async for event in speak_while_writing(_pieces(["A."], gap_s=0.01), _words, list, broken):
            seen.append(event)
    assert all(not isinstance(e, Spoken) for e in seen)


async def test_closing_early_stops_the_writer_and_the_voice() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield "More."
        finally:
            closed.set()

    async def voice(sentence: str) -> str:
        await asyncio.sleep(10)
        return sentence

    events = speak_while_writing(endless(), _words, list, voice)
    assert isinstance(await anext(events), Written)
    await events.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(closed.wait(), 1)
