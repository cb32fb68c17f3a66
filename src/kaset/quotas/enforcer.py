"""Enforcing per-key and per-user limits with the `limits` library.

One `QuotaEnforcer` per app (built in the lifespan). Before a request runs, `admit` takes a
concurrency slot, counts the request against the per-minute rate and checks
that the day's budgets the route draws on (its policy, kaset.api.policy) are not spent. When the request is done,
`Admission.finish` gives the slot back and charges the units it used (tokens, audio seconds,
images) to the daily budgets (fixed 24-hour windows starting at the first use). Budgets are
charged after the fact because a request's size is known only then: the request that crosses
a budget completes, the next one is refused.

The per-minute rate uses `limits`' sliding-window counter: O(1) time and memory per key (two
counters, this minute's and the last one's weighted by their overlap with the last 60 s). The
moving window would be exact, but it keeps one timestamp per request and reads them back with a
binary search of LINDEXes, which at high limits cost more Redis CPU than the request itself.
Within one window both count exactly: two replicas sharing Redis let a 100-per-minute key
through 100 times, not 200.

Storage: `limits`' memory storage in the embedded mode; its Redis storage (redis-py) when
`KASET_LIMITS_STORAGE_URL` or `KASET_REDIS_URL` is set, so replicas share one budget.
If Redis cannot be reached the policy is explicit (`KASET_LIMITS_ON_STORAGE_ERROR`):
`local` (the default) keeps enforcing every limit per replica from memory, logs a warning,
marks responses `x-kaset-limits: local` and sets the `kaset_limits_storage_degraded` gauge
until Redis answers again (checked every `limits_storage_retry_s`); `reject` answers 503.
Never a silent unlimited mode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kaset.auth.principal import Principal
from kaset.errors import LimitsUnavailable, RateLimited
from kaset.ids import new_id
from kaset.metrics import Metrics
from kaset.quotas.concurrency import ConcurrencySlots, MemorySlots, RedisSlots
from kaset.quotas.policy import NO_LIMITS, Limits
from kaset.usage import RequestUsage

log = logging.getLogger(__name__)

STORAGE_ERRORS = (StorageError, RedisError, OSError)
# Where `authenticate` leaves the request's Admission for the gateway middleware.
ADMISSION_SCOPE_KEY = "kaset.admission"
# Daily budgets and the usage unit that draws on each.
BUDGETS = ("tokens_per_day", "audio_seconds_per_day", "images_per_day")
_BUDGET_NOUN = {"tokens_per_day": "tokens", "audio_seconds_per_day": "seconds of audio",
                "images_per_day": "images"}


def units_used(usage: RequestUsage, budget: str) -> int:
    if budget == "tokens_per_day":
        return usage.prompt_tokens + usage.completion_tokens
    if budget == "audio_seconds_per_day":
        return math.ceil(usage.audio_seconds)
    return usage.images


@dataclass(frozen=True, slots=True)
class _Scope:
    kind: str  # "key" or "user", for messages and metrics
    id: str  # "k12" / "u3": the storage identifier
    limits: Limits


class _Backend:
    """A storage and the three mechanisms on it: per-minute rates, daily budgets, slots."""

    def __init__(self, storage: Storage, slots: ConcurrencySlots, name: str) -> None:
        self.storage = storage
        self.rates = SlidingWindowCounterRateLimiter(storage)
        self.budgets = FixedWindowRateLimiter(storage)
        self.slots = slots
        self.name = name


# Shared per-minute limits at least this high are counted in reserved chunks (see _leased_hit);
# lower ones, where a chunk would be a visible share of the budget, are counted one by one.
LEASE_MIN_LIMIT = 1000
LEASE_S = 0.1


@dataclass(slots=True)
class _RateLease:
    units: int = 0  # reserved in the shared window, not used yet
    expires: float = 0.0
    remaining: int = 0  # the window's remaining requests as last read, for the headers
    reset_at: float = 0.0
    rate: float = 0.0  # this caller's requests per second on this replica
    rate_since: float = 0.0
    rate_count: int = 0


@dataclass
class Admission:
    """A request let in: its slots, and the budgets to charge when it is done."""

    enforcer: QuotaEnforcer
    backend: _Backend
    scopes: tuple[_Scope, ...]
    leases: list[str] = field(default_factory=list)  # scope ids holding a slot
    lease: str = ""
    # Response headers (the per-minute limit of the tightest scope) as raw ASGI pairs.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class QuotaEnforcer:
    def __init__(self, *, key_defaults: Limits = NO_LIMITS, user_defaults: Limits = NO_LIMITS,
                 storage_url: str | None = None, on_storage_error: str = "local", retry_s: float = 5.0,
                 lease_s: float = 600.0, headers: bool = True, metrics: Metrics | None = None,
                 redis_timeout_s: float = 0.25, redis_prefix: str = "kaset:") -> None:
        self.key_defaults = key_defaults
        self.user_defaults = user_defaults
        self.on_storage_error = on_storage_error
        self.retry_s = retry_s
        self.headers = headers
        self.metrics = metrics
        self._local = _Backend(MemoryStorage(), MemorySlots(), "memory")
        self._shared: _Backend | None = None
        self._redis: Redis | None = None
        if storage_url and not storage_url.startswith("memory"):
            url = storage_url if storage_url.startswith("async+") else "async+" + storage_url
            storage = RedisStorage(url, implementation="redispy", wrap_exceptions=True,
                                   key_prefix=redis_prefix + "limits", socket_timeout=redis_timeout_s,
                                   socket_connect_timeout=redis_timeout_s)
            self._redis = Redis.from_url(storage_url.removeprefix("async+"), socket_timeout=redis_timeout_s,
                                         socket_connect_timeout=redis_timeout_s)
            slots = RedisSlots(self._redis, prefix=redis_prefix + "conc:", lease_s=lease_s)
            self._shared = _Backend(storage, slots, "redis")
        self._down_until = 0.0
        self._degraded = False
        # Effective scopes per principal: principals are immutable and cached by the key cache,
        # so this is one dict lookup per request after the first.
        self._plans: dict[Principal, tuple[_Scope, ...]] = {}
        # Per-minute units reserved from the shared storage, by (scope id, limit).
        self._leases: dict[tuple[str, int], _RateLease] = {}
        # RateLimitItems by amount: building one per request costs more than the memory check.
        self._minute_items: dict[int, RateLimitItem] = {}
        self._day_items: dict[int, RateLimitItem] = {}

    @property
    def shared(self) -> bool:
        return self._shared is not None

    @property
    def degraded(self) -> bool:
        """The shared storage failed and requests are metered per replica (or refused)."""
        return self._degraded

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def plan(self, principal: Principal) -> tuple[_Scope, ...]:
        scopes = self._plans.get(principal)
        if scopes is None:
            found: list[_Scope] = []
            if principal.key_id is not None:
                key_limits = (principal.limits or NO_LIMITS).over(self.key_defaults)
                if not key_limits.empty:
                    found.append(_Scope("key", f"k{principal.key_id}", key_limits))
            user_limits = (principal.user_limits or NO_LIMITS).over(self.user_defaults)
            if not user_limits.empty:
                found.append(_Scope("user", f"u{principal.user_id}", user_limits))
            scopes = tuple(found)
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[principal] = scopes
        return scopes

    # --- admission -----------------------------------------------------------------------------

    async def admit(self, principal: Principal, budgets: Sequence[str] = ()) -> Admission | None:
        """Let a request in, or raise RateLimited (429) / LimitsUnavailable (503); `budgets` are
        the daily budgets the route draws on (its policy: kaset.api.policy).

        None when nothing limits this caller (no limits set, no defaults): the common embedded
        case costs one dict lookup, and the route's daily budgets are not even looked up.
        """
        scopes = self.plan(principal)
        if not scopes:
            return None
        backend = self._backend()
        try:
            return await self._admit(backend, scopes, budgets)
        except STORAGE_ERRORS as exc:
            if backend is self._local:
                raise
            self._storage_failed(exc)
            return await self._admit(self._fallback(), scopes, budgets)

    def _backend(self) -> _Backend:
        if self._shared is None:
            return self._local
        if self._degraded and time.monotonic() < self._down_until:
            return self._fallback()
        return self._shared

    def _fallback(self) -> _Backend:
        if self.on_storage_error == "reject":
            raise LimitsUnavailable(
                "The rate-limit store (Redis) is unreachable and this server is set to refuse requests "
                "rather than serve them unmetered. Try again shortly; operators: check Redis.")
        return self._local

    def _storage_failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_s
        if not self._degraded:
            self._degraded = True
            if self.metrics is not None:
                self.metrics.limits_degraded = True
            policy = ("enforcing limits per replica from memory" if self.on_storage_error == "local"
                      else "refusing requests with 503")
            log.warning("rate-limit storage unreachable (%s: %s); %s until it answers again",
                        type(exc).__name__, exc, policy)

    def _storage_ok(self, backend: _Backend) -> None:
        if self._degraded and backend is self._shared:
            self._degraded = False
            if self.metrics is not None:
                self.metrics.limits_degraded = False
            log.warning("rate-limit storage reachable again; limits are shared across replicas again")

    async def _admit(self, backend: _Backend, scopes: tuple[_Scope, ...], budgets: Sequence[str]) -> Admission:
        admission = Admission(self, backend, scopes, lease=new_id())
        try:
            for scope in scopes:
                await self._take_slot(admission, scope)
            header: tuple[int, int, float] | None = None  # limit, remaining, reset_at
            header_item: tuple[RateLimitItem, _Scope] | None = None
            for scope in scopes:
                rpm = scope.limits.requests_per_minute
                if rpm is None:
                    continue
                item = self._per_minute(rpm)
                lease: _RateLease | None = None
                if backend is self._shared and rpm >= LEASE_MIN_LIMIT:
                    ok, lease = await self._leased_hit(backend, item, scope.id)
                else:
                    ok = await backend.rates.hit(item, scope.id)
                if not ok:
                    stats = await backend.rates.get_window_stats(item, scope.id)
                    self._reject("requests_per_minute", scope)
                    raise RateLimited(
                        f"Rate limit reached for this {_whose(scope)}: {rpm} requests per minute. "
                        f"Try again in {_seconds(stats.reset_time)}.",
                        retry_after=stats.reset_time - time.time(), limit=rpm, remaining=stats.remaining,
                        scope=scope.kind)
                if header is None and header_item is None:
                    if lease is not None:
                        header = (rpm, lease.remaining, lease.reset_at)
                    else:
                        header_item = (item, scope)
            for scope in scopes:
                for budget in budgets:
                    amount: int | None = getattr(scope.limits, budget)
                    if amount is None:
                        continue
                    item = self._per_day(amount)
                    if not await backend.budgets.test(item, scope.id, budget):
                        stats = await backend.budgets.get_window_stats(item, scope.id, budget)
                        self._reject(budget, scope)
                        raise RateLimited(
                            f"The daily budget of this {_whose(scope)} is spent: {amount} "
                            f"{_BUDGET_NOUN[budget]} per day. It renews in {_seconds(stats.reset_time)}.",
                            retry_after=stats.reset_time - time.time(), limit=amount, remaining=0,
                            scope=scope.kind, code="daily_quota_exceeded")
            if self.headers:
                if header is not None:
                    admission.headers = _headers(*header)
                elif header_item is not None:
                    item, scope = header_item
                    stats = await backend.rates.get_window_stats(item, scope.id)
                    admission.headers = _headers(item.amount, stats.remaining, stats.reset_time)
            if backend is self._local and self._degraded:
                admission.headers.append((b"x-kaset-limits", b"local"))
        except BaseException:
            await self._release(admission)
            raise
        self._storage_ok(backend)
        return admission

    async def _leased_hit(self, backend: _Backend, item: RateLimitItem, scope_id: str) -> tuple[bool, _RateLease]:
        """Count one request against a high shared per-minute limit, reserving units in chunks.

        A replica seeing many requests of one caller takes up to LEASE_S worth of its recent rate
        from Redis in one call (at most 0.1% of the limit) and counts the next requests from
        memory: the Redis call, which costs more CPU than the rest of the request, is paid once
        per chunk. Units are taken from the shared window when reserved, so replicas together
        never exceed the limit; a reservation unused after LEASE_S is dropped (counted, unused).
        A caller at a few requests per second gets chunks of 1: exact, as without leases.
        """
        now = time.monotonic()
        key = (scope_id, item.amount)
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _RateLease(rate_since=now)
        lease.rate_count += 1
        if now - lease.rate_since >= 1.0:
            lease.rate = lease.rate_count / (now - lease.rate_since)
            lease.rate_since, lease.rate_count = now, 0
        if lease.units > 0 and now < lease.expires:
            lease.units -= 1
            lease.remaining = max(lease.remaining - 1, 0)
            return True, lease
        chunk = max(1, min(int(lease.rate * LEASE_S), item.amount // 1000))
        granted = 0
        if chunk > 1 and await backend.rates.hit(item, scope_id, cost=chunk):
            granted = chunk
        elif await backend.rates.hit(item, scope_id):
            granted = 1
        if not granted:
            lease.units = 0
            return False, lease
        lease.units, lease.expires = granted - 1, now + LEASE_S
        if self.headers:
            stats = await backend.rates.get_window_stats(item, scope_id)
            lease.remaining, lease.reset_at = stats.remaining + lease.units, stats.reset_time
        if len(self._leases) > 10_000:
            self._leases.clear()
        return True, lease

    async def _take_slot(self, admission: Admission, scope: _Scope) -> None:
        limit = scope.limits.concurrent_requests
        if limit is None:
            return
        if not await admission.backend.slots.acquire(scope.id, limit, admission.lease):
            self._reject("concurrent_requests", scope)
            raise RateLimited(
                f"This {_whose(scope)} already has {limit} request{'s' if limit != 1 else ''} in progress, "
                "its limit. Send the next one when one finishes.",
                retry_after=1.0, limit=limit, remaining=0, scope=scope.kind, code="concurrency_limit_exceeded")
        admission.leases.append(scope.id)

    def _per_minute(self, amount: int) -> RateLimitItem:
        item = self._minute_items.get(amount)
        if item is None:
            item = self._minute_items[amount] = RateLimitItemPerMinute(amount, namespace="kaset-rpm")
        return item

    def _per_day(self, amount: int) -> RateLimitItem:
        item = self._day_items.get(amount)
        if item is None:
            item = self._day_items[amount] = RateLimitItemPerDay(amount, namespace="kaset-day")
        return item

    def _reject(self, limit: str, scope: _Scope) -> None:
        if self.metrics is not None:
            self.metrics.limit_rejected(limit, scope.kind)

    # --- after the request -----------------------------------------------------------------------

    async def finish(self, admission: Admission, usage: RequestUsage) -> None:
        """Give back the request's slots and charge what it used. Never raises: the response is
        already out, and a storage failure here must not turn into an error for anybody."""
        try:
            await self._release(admission)
            for scope in admission.scopes:
                for budget in BUDGETS:
                    amount: int | None = getattr(scope.limits, budget)
                    used = units_used(usage, budget) if amount is not None else 0
                    if used > 0 and amount is not None:
                        await admission.backend.budgets.hit(self._per_day(amount), scope.id, budget, cost=used)
        except STORAGE_ERRORS as exc:
            if admission.backend is not self._local:
                self._storage_failed(exc)
            log.warning("could not record a request's usage against its limits: %s", exc)

    async def _release(self, admission: Admission) -> None:
        leases, admission.leases = admission.leases, []
        for scope_id in leases:
            try:
                await admission.backend.slots.release(scope_id, admission.lease)
            except STORAGE_ERRORS as exc:
                # The lease expires on its own after lease_s.
                log.warning("could not release a concurrency slot: %s", exc)

    # --- introspection (admin API, tests) ----------------------------------------------------------

    async def status(self, principal: Principal) -> dict[str, dict[str, dict[str, float | int]]]:
        """For each limited scope of `principal`: each limit, what remains and when it resets."""
        backend = self._backend()
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for scope in self.plan(principal):
            entry: dict[str, dict[str, float | int]] = {}
            rpm = scope.limits.requests_per_minute
            if rpm is not None:
                stats = await backend.rates.get_window_stats(self._per_minute(rpm), scope.id)
                entry["requests_per_minute"] = {"limit": rpm,
                                                "remaining": stats.remaining, "reset_at": stats.reset_time}
            if scope.limits.concurrent_requests is not None:
                entry["concurrent_requests"] = {"limit": scope.limits.concurrent_requests,
                                                "in_use": await backend.slots.in_use(scope.id)}
            for budget in BUDGETS:
                amount = getattr(scope.limits, budget)
                if amount is not None:
                    stats = await backend.budgets.get_window_stats(self._per_day(amount), scope.id, budget)
                    entry[budget] = {"limit": amount, "remaining": max(stats.remaining, 0),
                                     "reset_at": stats.reset_time}
            out[scope.kind] = entry
        return out


def _headers(limit: int, remaining: int, reset_at: float) -> list[tuple[bytes, bytes]]:
    reset_in = max(0, math.ceil(reset_at - time.time()))
    return [(b"x-ratelimit-limit", str(limit).encode()), (b"x-ratelimit-remaining", str(max(remaining, 0)).encode()),
            (b"x-ratelimit-reset", str(reset_in).encode())]


def _whose(scope: _Scope) -> str:
    return "API key" if scope.kind == "key" else "account"


def _seconds(reset_at: float) -> str:
    seconds = max(1, math.ceil(reset_at - time.time()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
