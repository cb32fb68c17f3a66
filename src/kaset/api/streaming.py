"""Helpers for streamed responses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from kaset.media.audio import StreamingEncoder

T = TypeVar("T")


async def primed(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for the first item before the response starts.

    An early failure (prompt too long, unknown voice) then becomes a proper 4xx response
    instead of an error in the middle of a 200 stream.
    """
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return _empty()

    async def replay() -> AsyncIterator[T]:
        try:
            yield first
            async for item in items:
                yield item
        finally:
            await items.aclose()  # type: ignore[attr-defined]

    return replay()


async def _empty() -> AsyncIterator[T]:
    return
    yield


async def encoded(pcm: AsyncIterator[bytes], sample_rate: int, fmt: str) -> AsyncIterator[bytes]:
    """16-bit PCM pieces (from any model handle) encoded as `fmt` as they arrive.

    pcm and wav are a copy (done here); the codecs run in a thread, so the event loop never
    waits on an encoder. Stopping early (a client gone) frees the encoder and stops the speech.
    """
    encoder = StreamingEncoder(sample_rate, fmt)
    cheap = fmt in ("pcm", "wav")
    finished = False
    try:
        async for piece in pcm:
            out = encoder.feed(piece) if cheap else await asyncio.to_thread(encoder.feed, piece)
            if out:
                yield out
        finished = True
        tail = encoder.finish() if cheap else await asyncio.to_thread(encoder.finish)
        if tail:
            yield tail
    finally:
        if not finished:
            encoder.abort()
        close = getattr(pcm, "aclose", None)
        if close is not None:
            await close()
