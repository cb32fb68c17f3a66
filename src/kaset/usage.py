"""What the current request used: tokens, audio seconds, images, characters.

The gateway middleware puts a fresh `RequestUsage` in a contextvar for every request (as it
does with `inference_seconds`), route handlers add to it with `record(...)`, and the
middleware reads it when the response is done, for the request log and the metrics. Streamed
responses run their body in a child task with a copy of the context; the copy holds the same
object, so units recorded while streaming still count.

    from kaset import usage
    usage.record(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
"""

from __future__ import annotations

import contextvars


class RequestUsage:
    """Units one request consumed. Plain slots class: one is built per request."""

    __slots__ = ("audio_seconds", "characters", "completion_tokens", "images", "model", "prompt_tokens")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Seconds of audio heard (transcription) or produced (speech).
        self.audio_seconds = 0.0
        self.images = 0
        # Characters of text taken in (speech input, translation input).
        self.characters = 0
        # Set when a route knows better than its `x-kaset-model` response header.
        self.model: str | None = None


current_usage: contextvars.ContextVar[RequestUsage | None] = contextvars.ContextVar("current_usage", default=None)


def record(*, prompt_tokens: int = 0, completion_tokens: int = 0, audio_seconds: float = 0.0, images: int = 0,
           characters: int = 0, model: str | None = None) -> None:
    """Add units to the current request. Outside a request (CLI, tests of a runtime) it does nothing."""
    current = current_usage.get()
    if current is None:
        return
    current.prompt_tokens += prompt_tokens
    current.completion_tokens += completion_tokens
    current.audio_seconds += audio_seconds
    current.images += images
    current.characters += characters
    if model is not None:
        current.model = model
