"""The quota enforcer on the `limits` library's real storages: memory, and the real Redis.

Two enforcers sharing one Redis stand for two gateway replicas. Redis outages are made with a
TCP proxy in front of the real Redis that can be cut and restored.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from kaset.auth.principal import Principal
from kaset.errors import LimitsUnavailable, RateLimited
from kaset.metrics import Metrics
from kaset.quotas.enforcer import QuotaEnforcer
from kaset.quotas.policy import Limits
from kaset.usage import RequestUsage
from tests.fixtures.redis import redis_prefix, redis_url
from tests.fixtures.tcp_proxy import TcpProxy

__all__ = ["redis_prefix", "redis_url"]

_ids = itertools.count(int(time.time() * 1000) % 10_000_000)


def principal(key: Limits | None = None, user: Limits | None = None, user_id: int | None = None) -> Principal:
    return Principal(user_id=user_id or next(_ids), username="farmer", role="consumer", key_id=next(_ids),
                     limits=key, user_limits=user)


async def admitted(enforcer: QuotaEnforcer, who: Principal, n: int, budgets: tuple[str, ...] = ()) -> int:
    """How many of n sequential requests get in (each finished at once)."""
    count = 0
    for _ in range(n):
        try:
            admission = await enforcer.admit(who, budgets)
        except RateLimited:
            continue
        count += 1
        if admission is not None:
            await enforcer.finish(admission, RequestUsage())
    return count


@pytest.fixture
async def memory() -> AsyncIterator[QuotaEnforcer]:
    enforcer = QuotaEnforcer()
    yield enforcer
    await enforcer.close()


@pytest.fixture
async def shared(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[QuotaEnforcer, QuotaEnforcer]]:
    """Two enforcers on one Redis: two gateway replicas."""
    a = QuotaEnforcer(storage_url=redis_url, redis_prefix=redis_prefix)
    b = QuotaEnforcer(storage_url=redis_url, redis_prefix=redis_prefix)
    yield a, b
    await a.close()
    await b.close()


async def test_no_limits_costs_nothing(memory: QuotaEnforcer) -> None:
    assert await memory.admit(principal()) is None


async def test_requests_per_minute_then_429_with_headers(memory: QuotaEnforcer) -> None:
    who = principal(Limits(requests_per_minute=5))
    admission = await memory.admit(who)
    assert admission is not None
    assert dict(admission.headers)[b"x-ratelimit-limit"] == b"5"
    assert dict(admission.headers)[b"x-ratelimit-remaining"] == b"4"
    assert await admitted(memory, who, 10) == 4
    with pytest.raises(RateLimited) as refused:
        await memory.admit(who)
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "5 requests per minute" in error.message
    assert 0 < error.retry_after <= 60
    headers = error.headers
    assert headers["x-ratelimit-limit"] == "5" and headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 60 and headers["x-ratelimit-reset"] == headers["Retry-After"]


async def test_user_budget_is_shared_by_the_users_keys(memory: QuotaEnforcer) -> None:
    user_id = next(_ids)
    first = principal(user=Limits(requests_per_minute=6), user_id=user_id)
    second = principal(user=Limits(requests_per_minute=6), user_id=user_id)
    assert await admitted(memory, first, 4) == 4
    assert await admitted(memory, second, 4) == 2
    with pytest.raises(RateLimited, match="account"):
        await memory.admit(first)


async def test_server_defaults_apply_where_a_key_sets_none() -> None:
    enforcer = QuotaEnforcer(key_defaults=Limits(requests_per_minute=3, concurrent_requests=9))
    assert await admitted(enforcer, principal(), 5) == 3
    # A key's own value wins over the default.
    assert await admitted(enforcer, principal(Limits(requests_per_minute=4)), 6) == 4


async def test_concurrent_requests(memory: QuotaEnforcer) -> None:
    who = principal(Limits(concurrent_requests=2))
    first, second = await memory.admit(who), await memory.admit(who)
    assert first is not None and second is not None
    with pytest.raises(RateLimited) as refused:
        await memory.admit(who)
    assert refused.value.code == "concurrency_limit_exceeded" and "2 requests in progress" in refused.value.message
    await memory.finish(first, RequestUsage())
    third = await memory.admit(who)
    assert third is not None


async def test_refused_request_gives_its_slot_back(memory: QuotaEnforcer) -> None:
    """A request refused by the rate limit after taking a concurrency slot must not keep it."""
    who = principal(Limits(concurrent_requests=1, requests_per_minute=1))
    admission = await memory.admit(who)
    assert admission is not None
    await memory.finish(admission, RequestUsage())
    with pytest.raises(RateLimited, match="per minute"):
        await memory.admit(who)
    status = await memory.status(who)
    assert status["key"]["concurrent_requests"]["in_use"] == 0


def used(tokens: int = 0, audio_seconds: float = 0.0, images: int = 0) -> RequestUsage:
    usage = RequestUsage()
    usage.prompt_tokens, usage.audio_seconds, usage.images = tokens, audio_seconds, images
    return usage


async def test_daily_token_budget_is_charged_after_the_request(memory: QuotaEnforcer) -> None:
    who = principal(Limits(tokens_per_day=100))
    chat = ("tokens_per_day", "images_per_day")  # the chat route's budgets
    for tokens in (60, 50):  # the second request crosses the budget and still completes
        admission = await memory.admit(who, chat)
        assert admission is not None
        await memory.finish(admission, used(tokens=tokens))
    with pytest.raises(RateLimited) as refused:
        await memory.admit(who, chat)
    assert refused.value.code == "daily_quota_exceeded"
    assert "100 tokens per day" in refused.value.message
    assert 23 * 3600 < refused.value.retry_after <= 24 * 3600
    # A spent token budget does not block a route that draws on another one.
    assert await memory.admit(who, ("audio_seconds_per_day",)) is not None
    status = await memory.status(who)
    assert status["key"]["tokens_per_day"]["remaining"] == 0


async def test_audio_and_image_budgets(memory: QuotaEnforcer) -> None:
    who = principal(user=Limits(audio_seconds_per_day=10, images_per_day=2))
    audio, images = ("audio_seconds_per_day",), ("images_per_day",)
    admission = await memory.admit(who, audio)
    assert admission is not None
    await memory.finish(admission, used(audio_seconds=10.2))  # charged as 11 s
    with pytest.raises(RateLimited, match="seconds of audio"):
        await memory.admit(who, audio)
    for _ in range(2):
        admission = await memory.admit(who, images)
        assert admission is not None
        await memory.finish(admission, used(images=1))
    with pytest.raises(RateLimited, match="2 images per day"):
        await memory.admit(who, images)


async def test_replicas_sharing_redis_share_one_budget(shared: tuple[QuotaEnforcer, QuotaEnforcer]) -> None:
    a, b = shared
    who = principal(Limits(requests_per_minute=20))
    got = await asyncio.gather(admitted(a, who, 20), admitted(b, who, 20))
    assert sum(got) == 20, got


async def test_concurrency_is_shared_through_redis(shared: tuple[QuotaEnforcer, QuotaEnforcer]) -> None:
    a, b = shared
    who = principal(Limits(concurrent_requests=1))
    held = await a.admit(who)
    assert held is not None
    with pytest.raises(RateLimited):
        await b.admit(who)
    await a.finish(held, RequestUsage())
    assert await b.admit(who) is not None


async def test_a_dead_replicas_slot_expires(redis_url: str, redis_prefix: str) -> None:
    """A gateway that dies mid-request never releases its slot; the lease runs out instead."""
    dying = QuotaEnforcer(storage_url=redis_url, redis_prefix=redis_prefix, lease_s=0.5)
    survivor = QuotaEnforcer(storage_url=redis_url, redis_prefix=redis_prefix, lease_s=0.5)
    who = principal(Limits(concurrent_requests=1))
    assert await dying.admit(who) is not None  # never finished
    await dying.close()
    with pytest.raises(RateLimited):
        await survivor.admit(who)
    await asyncio.sleep(0.6)
    assert await survivor.admit(who) is not None
    await survivor.close()


async def test_redis_down_falls_back_to_local_limits_and_recovers(redis_url: str, redis_prefix: str) -> None:
    """Policy "local": limits keep holding per replica while Redis is away, and the outage is
    visible (metric, header); once Redis answers again the shared budget is used again."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    proxy.start()
    metrics = Metrics()
    enforcer = QuotaEnforcer(storage_url=f"redis://127.0.0.1:{proxy.port}/0", redis_prefix=redis_prefix,
                             retry_s=0.3, metrics=metrics)
    try:
        who = principal(Limits(requests_per_minute=3))
        assert await admitted(enforcer, who, 1) == 1
        proxy.stop()
        admission = await enforcer.admit(who)
        assert admission is not None and enforcer.degraded and metrics.limits_degraded
        assert (b"x-kaset-limits", b"local") in admission.headers
        # Still limited, from memory: never an unlimited mode.
        assert await admitted(enforcer, who, 10) == 2
        with pytest.raises(RateLimited):
            await enforcer.admit(who)
        proxy.start()
        await asyncio.sleep(0.4)
        fresh = principal(Limits(requests_per_minute=3))
        admission = await enforcer.admit(fresh)
        assert admission is not None and not enforcer.degraded and not metrics.limits_degraded
        assert (b"x-kaset-limits", b"local") not in admission.headers
    finally:
        await enforcer.close()
        proxy.close()


async def test_redis_down_with_reject_policy_answers_503(redis_prefix: str) -> None:
    enforcer = QuotaEnforcer(storage_url="redis://127.0.0.1:1/0", redis_prefix=redis_prefix,
                             on_storage_error="reject")
    try:
        with pytest.raises(LimitsUnavailable) as refused:
            await enforcer.admit(principal(Limits(requests_per_minute=3)))
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "5"}
        assert "unmetered" in refused.value.message
        # Callers without limits are not affected by the store at all.
        assert await enforcer.admit(principal()) is None
    finally:
        await enforcer.close()


async def test_high_shared_limits_are_counted_in_reserved_chunks(
        shared: tuple[QuotaEnforcer, QuotaEnforcer]) -> None:
    """A busy caller of a high limit costs a Redis call per chunk, not per request, and two
    replicas together still never go past the limit."""
    a, b = shared
    who = principal(Limits(requests_per_minute=2000))
    started, total = time.monotonic(), 0
    while time.monotonic() - started < 1.2:  # long enough for each replica to measure the rate
        total += sum(await asyncio.gather(admitted(a, who, 20), admitted(b, who, 20)))
    assert a._leases[(f"k{who.key_id}", 2000)].rate > 20
    total += sum(await asyncio.gather(admitted(a, who, 3000), admitted(b, who, 3000)))
    assert (await a.status(who))["key"]["requests_per_minute"]["remaining"] == 0
    # Never past the limit; at most each replica's last reservation (2 units: 0.1% of the
    # limit) can go unused.
    assert 2000 - 4 <= total <= 2000, total


async def test_leases_make_the_redis_calls_rarer(redis_url: str, redis_prefix: str) -> None:
    enforcer = QuotaEnforcer(storage_url=redis_url, redis_prefix=redis_prefix, headers=False)
    calls = 0
    hit = enforcer._shared.rates.hit if enforcer._shared else None
    assert hit is not None

    async def counting_hit(*args: object, **kwargs: object) -> bool:
        nonlocal calls
        calls += 1
        return await hit(*args, **kwargs)  # type: ignore[arg-type]

    enforcer._shared.rates.hit = counting_hit  # type: ignore[method-assign,union-attr]
    who = principal(Limits(requests_per_minute=1_000_000))
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 2.0:
        n += await admitted(enforcer, who, 50)
    assert calls < n / 5, (calls, n)
    # A low limit is counted request by request: exact.
    calls = 0
    assert await admitted(enforcer, principal(Limits(requests_per_minute=999)), 30) == 30
    assert calls == 30
    await enforcer.close()
