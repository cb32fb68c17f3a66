"""Spoken chat replies' transcripts: in one process, and shared by replicas through the real
Redis on this machine."""

from __future__ import annotations

import asyncio
import time

import pytest

from kaset.errors import StoreUnavailable
from kaset.store.spoken_replies import MemorySpokenReplies, RedisSpokenReplies
from tests.fixtures.redis import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]


async def test_memory_recalls_until_expiry_and_drops_the_oldest() -> None:
    replies = MemorySpokenReplies(max_items=2)
    await replies.remember("audio_a", "Flood the field.", time.time() + 60)
    await replies.remember("audio_b", "Drain it later.", time.time() - 1)
    assert await replies.recall("audio_a") == "Flood the field."
    assert await replies.recall("audio_b") is None  # expired
    await replies.remember("audio_c", "Then weed.", time.time() + 60)
    await replies.remember("audio_d", "Then harvest.", time.time() + 60)
    assert await replies.recall("audio_a") is None  # the oldest, dropped past max_items
    assert await replies.recall("audio_d") == "Then harvest."


async def test_a_reply_spoken_by_one_replica_is_recalled_by_another(redis_url: str, redis_prefix: str) -> None:
    speaker, listener = RedisSpokenReplies(redis_url, redis_prefix), RedisSpokenReplies(redis_url, redis_prefix)
    try:
        await speaker.remember("audio_1", "ให้น้ำนาข้าวทุกเช้า", time.time() + 60)
        await speaker.remember("audio_2", "Short-lived.", time.time() + 1)
        assert await listener.recall("audio_1") == "ให้น้ำนาข้าวทุกเช้า"
        assert await listener.recall("audio_unknown") is None
        await asyncio.sleep(2.1)  # Redis expires the key with its audio (EXAT, whole seconds)
        assert await listener.recall("audio_2") is None
    finally:
        await speaker.close()
        await listener.close()


async def test_redis_down_loses_no_response_and_recall_says_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    replies = RedisSpokenReplies("redis://127.0.0.1:1/0", "kaset-test:")
    try:
        await replies.remember("audio_x", "Spray at dusk.", time.time() + 60)  # logged, not raised
        assert "could not store the transcript" in caplog.text
        with pytest.raises(StoreUnavailable, match="send the reply's transcript") as refused:
            await replies.recall("audio_x")
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "5"}
    finally:
        await replies.close()
