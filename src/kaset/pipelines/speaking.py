"""Speak a reply while it is still being written: the one sentence speaker of chat's spoken
replies (kaset.api.serving.chat_stream) and the voice assistant (kaset.pipelines.voice).

The text is read in one task and passed on the moment it arrives; every sentence cut from it
is spoken in a second task, in order, so the text never waits for the voice and the voice
starts with the first sentence rather than the last. Closing the iterator (a client gone)
cancels both tasks, which stops the generation and the synthesis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Written(Generic[T]):
    """A piece of the reply's text, as the source gave it."""

    item: T


@dataclass(frozen=True, slots=True)
class Spoken(Generic[A]):
    """Sentence `index` (0, 1, ... in the order they were cut) and its speech."""

    index: int
    sentence: str
    audio: A


@dataclass(frozen=True, slots=True)
class WritingDone:
    """The source is exhausted (speech of the last sentences may still follow)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A background task ended (with its error, if it failed)."""

    error: BaseException | None = None


async def report_end(work: Awaitable[None], queue: asyncio.Queue[Any]) -> None:
    """Run `work` and put a `Finished` on `queue` when it ends, however it ends short of
    cancellation: the consumer re-raises the error where it can report it."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        queue.put_nowait(Finished(exc))
    else:
        queue.put_nowait(Finished())


async def speak_while_writing(items: AsyncIterator[T], cut: Callable[[T], list[str]],
                              finish: Callable[[], list[str]],
                              speak: Callable[[str], Awaitable[A | None]] | None,
                              ) -> AsyncIterator[Written[T] | Spoken[A] | WritingDone]:
    """Every item of `items` as `Written`, then `WritingDone`; and for each sentence `cut`
    returns (and `finish` returns at the end), `Spoken` once `speak` has said it (a sentence
    `speak` returns None for is skipped). With `speak` None nothing is cut or spoken.
    An error in either task is raised here, after what came before it."""
    events: asyncio.Queue[Written[T] | Spoken[A] | WritingDone | Finished] = asyncio.Queue()
    sentences: asyncio.Queue[str | None] = asyncio.Queue()

    async def write() -> None:
        try:
            async for item in items:
                events.put_nowait(Written(item))
                if speak is not None:
                    for sentence in cut(item):
                        sentences.put_nowait(sentence)
            if speak is not None:
                for sentence in finish():
                    sentences.put_nowait(sentence)
            events.put_nowait(WritingDone())
        finally:
            sentences.put_nowait(None)
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    async def say() -> None:
        index = 0
        while (sentence := await sentences.get()) is not None:
            assert speak is not None
            audio = await speak(sentence)
            if audio is not None:
                events.put_nowait(Spoken(index, sentence, audio))
            index += 1

    tasks = [asyncio.create_task(report_end(write(), events)), asyncio.create_task(report_end(say(), events))]
    try:
        running = len(tasks)
        while running:
            event = await events.get()
            if isinstance(event, Finished):
                if event.error is not None:
                    raise event.error
                running -= 1
                continue
            yield event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
