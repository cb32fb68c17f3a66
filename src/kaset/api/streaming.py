"""Helpers for streamed responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

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
