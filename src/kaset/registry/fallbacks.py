"""Serving one call despite failures: each attempt guarded by its upstream's breaker, retries of
idempotent calls, and fallbacks down a route's candidates.

The router (`kaset.registry.routing`) decides what a name means (a route's candidates, in order,
or one plain model) and hands the call to its `FallbackCaller`, which runs `fn(handle)` until one
model answers or a failure is the caller's own.

**Whose fault.** Every decision below reads the error's own class (`kaset.errors`): an error
is `retryable` (transient: timeouts, overload, rate limits, an upstream's 5xx) and/or a
`breaker_failure` (the server's or the upstream's fault: crashes, timeouts, failed loads, an
upstream's 5xx), or neither (the caller's own: invalid content, auth, permission, payload too
large, the caller's own rate limit or quota). Any other exception escaping an engine counts as
both. No status code or code string is looked at.

**Fallbacks.** The chosen target, then `fallbacks` in order (a model already tried is
skipped, and so is one that cannot do the task). The next one is tried when a call fails with
an error that is retryable or a breaker failure, or when the router itself skipped the model
(an open breaker, a target that is not installed). Never on the caller's own error: that is
returned at once. When every candidate failed, the client gets the last real error (or 503
`circuit_open` with Retry-After when every candidate was skipped by its breaker).

**Retries** (`retries: N`) re-run the same model for idempotent calls only: embeddings,
transcriptions and translations of audio, text translation, non-streamed speech, and
non-streamed chat/completions that are deterministic (temperature 0 or a seed: the retry
returns what the first attempt would have, so the client cannot tell). Streams are never
retried (only fallen back before the first chunk). The wait before a retry is exponential
with full jitter (`retry_backoff_s` * 2^n, drawn uniformly below that, capped at
`retry_max_wait_s`); an upstream's Retry-After is honoured when it is shorter than the cap,
and a longer one moves on to the next fallback instead of waiting. The retry loop is
`tenacity`'s. Retryable errors are retried; an unavailable model (not installed, failed to
load, bad provider key: breaker failures that are not retryable) and an open breaker are not.

**Breakers** (`kaset.registry.breakers`): one per upstream, created on its first breaker
failure; an open one fails the attempt fast with `CircuitOpen`.

**Spans.** Each attempt on a model is a child span of the request's (`kaset.tracing.model_call`,
"<task> <model>"), current while the model runs, so a worker's or a provider's span hangs
under it: attributes `kaset.model`, `kaset.operation` (the task), `kaset.route`, `kaset.remote`,
`kaset.outcome` (ok, or the reason below, or `caller_error`, `cancelled`); status ERROR only
when the failure is not the caller's. With tracing off it is a shared no-op context.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from kaset import tracing
from kaset.errors import ModelUnavailable, NotFound, UpstreamRateLimited, UpstreamTimeout, faults
from kaset.metrics import current_metrics
from kaset.registry.breakers import Breaker, CircuitOpen, upstream_of
from kaset.registry.catalog import Catalog, ModelSpec, RouteSpec
from kaset.registry.handle import ModelHandle
from kaset.runtimes.base import Task

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a caller runs on the model that serves its call (everything that depends on the model).
Call = Callable[[ModelHandle], Awaitable[T]]

# Why a call moved on (the `reason` label of kaset_fallbacks_total and kaset_retries_total):
# a name for what the error's class says (see `fallback_reason`).
Reason = Literal["error", "timeout", "unavailable", "not_installed", "rate_limited", "overloaded", "circuit_open"]


class HandleLookup(Protocol):
    """How the caller reaches a model: on a worker that serves it, else loaded here (`Router.handle`)."""

    def __call__(self, name: str, task: Task, *, local_only: bool = False) -> Awaitable[ModelHandle]: ...


class TargetNotInstalled(ModelUnavailable):
    """A route's target is in the catalog but not installed here: the route's problem, not the
    caller's (a plain model name that is not installed stays a 404)."""

    code = "model_not_installed"
    # The route's own skip: a route moves on (see `fallback_reason`), but the model did not fail.
    retryable = False
    breaker_failure = False


def fallback_reason(exc: BaseException) -> Reason | None:
    """Why `exc` lets a route try its next model, or None when the error is the caller's own (or
    not an error: cancellation). Read from the error's class (`retryable`, `breaker_failure`);
    the label only names the case for the metrics."""
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, TargetNotInstalled):
        return "not_installed"
    retryable, breaker_failure = faults(exc)
    if not breaker_failure:
        if not retryable:
            return None
        return "rate_limited" if isinstance(exc, UpstreamRateLimited) else "overloaded"  # busy, not broken
    if not retryable:
        return "unavailable"
    return "timeout" if isinstance(exc, TimeoutError | UpstreamTimeout) else "error"


def _retryable(exc: BaseException) -> bool:
    """Whether the same model may be tried again: a transient failure, and not an open breaker
    (its cool-down decides when the next call goes)."""
    return faults(exc)[0] and not isinstance(exc, CircuitOpen)


def _record_fallback(route: str, from_model: str, to_model: str, reason: str) -> None:
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.fallback(route, from_model, to_model, reason)


def _record_retry(model: str, reason: str) -> None:
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.retry(model, reason)


def _end_span(span: tracing.Span, exc: BaseException | None, model: ModelHandle | None) -> None:
    """A model call's outcome on its span: ok, the reason a route would move on (an ERROR), or
    the caller's own error / a cancellation (no error status: not the server's failure)."""
    remote = None if model is None else model.remote
    if exc is None:
        tracing.end_model_call(span, "ok", remote=remote)
        return
    reason = fallback_reason(exc)
    if reason is not None:
        tracing.end_model_call(span, reason, remote=remote, error=exc, fault=True)
    else:
        outcome = "caller_error" if isinstance(exc, Exception) else "cancelled"
        tracing.end_model_call(span, outcome, remote=remote, error=exc, fault=False)



class FallbackCaller:
    """Runs one call on a plain model or down a route's candidates, each attempt guarded by its
    upstream's breaker. The router owns one; `handle` is how it reaches a model. State (the
    breakers) is this process's only."""

    def __init__(self, catalog: Catalog, handle: HandleLookup, *, breaker_failures: int, breaker_cooldown_s: float,
                 retry_backoff_s: float, retry_max_wait_s: float, sleep: Callable[[float], Awaitable[None]],
                 clock: Callable[[], float], rng: Callable[[], float]) -> None:
        self.catalog = catalog
        self._handle = handle
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_max_wait_s = retry_max_wait_s
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        # Created on an upstream's first failure: while none exists the hot path never looks.
        self.breakers: dict[str, Breaker] = {}
        self._upstreams: dict[str, str] = {}

    # --- a plain model name --------------------------------------------------------------------------

    async def call_unguarded(self, name: str, task: Task, fn: Call[T], *, local_only: bool) -> tuple[T, ModelSpec]:
        """A plain model name while no upstream has a breaker: the call in its span, and the
        upstream's breaker created if it failed by the server's fault."""
        with tracing.model_call(name, task) as span:
            model: ModelHandle | None = None
            try:
                model = await self._handle(name, task, local_only=local_only)
                result = await fn(model)
            except BaseException as exc:
                if faults(exc)[1] and self.breaker_failures > 0:
                    spec = self.catalog.get(name)
                    if spec is not None:
                        self._breaker(self._upstream(spec)).failed()
                if span is not None:
                    _end_span(span, exc, model)
                raise
            if span is not None:
                _end_span(span, None, model)
            return result, model.spec

    # --- a route -------------------------------------------------------------------------------------

    async def call_route(self, route: RouteSpec, candidates: list[ModelSpec], task: Task, fn: Call[T], *,
                         retry: bool, local_only: bool) -> tuple[T, ModelSpec]:
        """`fn` on the first of `candidates` that answers, retrying each when `retry` (idempotent)
        and the route has retries: (fn's result, the spec that served)."""
        retries = route.retries if retry else 0
        failed: tuple[str, str] | None = None  # (model, reason) of the last candidate that failed
        last_error: BaseException | None = None
        first_skip: CircuitOpen | None = None
        for spec in candidates:
            served = self.catalog.name_of(spec)
            if failed is not None:
                log.info("route %s: %s failed (%s), trying %s", route.name, failed[0], failed[1], served)
                _record_fallback(route.name, failed[0], served, failed[1])
            try:
                if retries:
                    result = await self._with_retries(spec, task, fn, route, retries, local_only)
                else:
                    result = await self.attempt(spec, spec.key, task, fn, route.timeout_s, route=route.name,
                                                local_only=local_only)
                return result, spec
            except CircuitOpen as exc:
                first_skip = first_skip or exc
                failed = (served, "circuit_open")
            except Exception as exc:
                reason = fallback_reason(exc)
                if reason is None:
                    raise
                failed, last_error = (served, reason), exc
        if failed is not None:
            _record_fallback(route.name, failed[0], "none", failed[1])
        if last_error is not None:
            raise last_error
        assert first_skip is not None
        raise first_skip

    async def _with_retries(self, spec: ModelSpec, task: Task, fn: Call[T], route: RouteSpec, retries: int,
                            local_only: bool) -> T:
        served = self.catalog.name_of(spec)

        def retryable(exc: BaseException) -> bool:
            if not _retryable(exc):
                return False
            retry_after = getattr(exc, "retry_after", None)
            # A long Retry-After: better served by the next fallback than by waiting.
            return not (isinstance(retry_after, int | float) and retry_after > self.retry_max_wait_s)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            reason = fallback_reason(exc) if exc is not None else None
            log.info("retrying %s after %s (attempt %d)", served, reason, state.attempt_number + 1)
            _record_retry(served, reason or "error")

        retrying = AsyncRetrying(stop=stop_after_attempt(retries + 1), wait=self._backoff,
                                 retry=retry_if_exception(retryable), before_sleep=before_sleep,
                                 sleep=self._sleep, reraise=True)
        result: T = await retrying(self.attempt, spec, spec.key, task, fn, route.timeout_s, route=route.name,
                                   local_only=local_only)
        return result

    def _backoff(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the upstream's Retry-After (under the cap), else
        exponential backoff with full jitter."""
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            return float(min(retry_after, self.retry_max_wait_s))
        ceiling = min(self.retry_max_wait_s, self.retry_backoff_s * 2 ** (state.attempt_number - 1))
        return self._rng() * ceiling

    # --- one attempt on one model ------------------------------------------------------------------

    async def attempt(self, spec: ModelSpec, name: str, task: Task, fn: Call[T], timeout_s: float | None, *,
                      route: str | None, local_only: bool = False) -> T:
        """One call of `fn` on `spec`'s handle, guarded by its upstream's breaker, in its own span.
        `route`: the route being served (a target that is not installed is then the route's
        problem, not the caller's 404), None for a plain model name."""
        served = self.catalog.name_of(spec)
        with tracing.model_call(served, task, None if route is None else {"kaset.route": route}) as span:
            model: ModelHandle | None = None
            try:
                upstream = self._upstream(spec)
                breaker = self.breakers.get(upstream)
                if breaker is not None and not breaker.admit():
                    raise CircuitOpen(
                        f"The model '{served}' is not being called for now: its upstream ({upstream}) failed "
                        f"{breaker.failures} time(s) in a row. Retry later.", retry_after=breaker.retry_after())
                try:
                    try:
                        model = await self._handle(name, task, local_only=local_only)
                    except NotFound as exc:
                        if route is not None:
                            raise TargetNotInstalled(exc.message, param="model") from exc
                        raise
                    if timeout_s is None:
                        result = await fn(model)
                    else:
                        try:
                            async with asyncio.timeout(timeout_s):
                                result = await fn(model)
                        except TimeoutError:
                            raise UpstreamTimeout(f"The model '{served}' did not answer within {timeout_s:g} s "
                                                  "(the route's timeout_s).") from None
                except BaseException as exc:
                    self._settle(upstream, breaker, exc)
                    raise
                if breaker is not None:
                    breaker.succeeded()
            except BaseException as exc:
                if span is not None:
                    _end_span(span, exc, model)
                raise
            if span is not None:
                _end_span(span, None, model)
            return result

    def _settle(self, upstream: str, breaker: Breaker | None, exc: BaseException) -> None:
        if faults(exc)[1]:
            if self.breaker_failures > 0:
                (breaker or self._breaker(upstream)).failed()
        elif breaker is not None:
            breaker.released()

    def _breaker(self, upstream: str) -> Breaker:
        breaker = self.breakers.get(upstream)
        if breaker is None:
            breaker = self.breakers[upstream] = Breaker(upstream, self.breaker_failures, self.breaker_cooldown_s,
                                                        clock=self._clock)
        return breaker

    def _upstream(self, spec: ModelSpec) -> str:
        upstream = self._upstreams.get(spec.key)
        if upstream is None:
            upstream = self._upstreams[spec.key] = upstream_of(spec)
        return upstream
