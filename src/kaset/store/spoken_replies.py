"""Transcripts of spoken chat replies by audio id.

A client continues a conversation by sending an assistant turn back as `{"audio": {"id": ...}}`
(OpenAI's shape for audio replies), and the model must see what it said. Kept in memory (one
process, bounded) by default, and in Redis when `KASET_REDIS_URL` is set, so a reply spoken by one
replica is recalled by any other behind the same load balancer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kaset.config import Settings
from kaset.errors import StoreUnavailable

log = logging.getLogger(__name__)


class SpokenReplies(Protocol):
    async def remember(self, audio_id: str, transcript: str, expires_at: float) -> None: ...

    async def recall(self, audio_id: str) -> str | None:
        """The transcript, or None when the id is unknown or expired."""
        ...

    async def close(self) -> None: ...


class MemorySpokenReplies:
    """One process's replies; the oldest are dropped past `max_items`."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def remember(self, audio_id: str, transcript: str, expires_at: float) -> None:
        self._items[audio_id] = (expires_at, transcript)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    async def recall(self, audio_id: str) -> str | None:
        found = self._items.get(audio_id)
        if found is None or found[0] < time.time():
            self._items.pop(audio_id, None)
            return None
        return found[1]

    async def close(self) -> None:
        self._items.clear()


class RedisSpokenReplies:
    """Every replica's replies, each key expiring with its audio."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis = Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self.prefix = f"{prefix}spoken:"

    async def remember(self, audio_id: str, transcript: str, expires_at: float) -> None:
        try:
            await self.redis.set(self.prefix + audio_id, transcript.encode(), exat=int(expires_at))
        except RedisError as exc:
            # The reply itself has been made: losing its transcript costs only a later
            # `audio.id` lookup (a 400 asking for the text instead), not this response.
            log.warning("could not store the transcript of spoken reply %s: %s", audio_id, exc)

    async def recall(self, audio_id: str) -> str | None:
        try:
            found = await self.redis.get(self.prefix + audio_id)
        except RedisError as exc:
            raise StoreUnavailable(
                "The server cannot look up earlier spoken replies right now (its shared store is "
                "unreachable). Retry, or send the reply's transcript as the message's content.") from exc
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    async def close(self) -> None:
        await self.redis.aclose()


def spoken_replies(settings: Settings) -> SpokenReplies:
    if settings.redis_url:
        return RedisSpokenReplies(settings.redis_url, settings.redis_prefix)
    return MemorySpokenReplies()
