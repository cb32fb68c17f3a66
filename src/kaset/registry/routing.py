"""Routing for the model APIs: weighted targets (A/B, canary), fallbacks, retries, circuit breakers.

A route is a public model name declared in a catalog file's top-level `routes:` list
(`kaset.registry.catalog.RouteSpec`):

    routes:
      - name: chat-with-fallback
        targets:                              # one is chosen per call, by weight
          - {model: smollm2-135m@1, weight: 90}
          - {model: smollm2-135m@2, weight: 10}
        fallbacks: [gpt-4o, echo]             # then these, in order, if the chosen one fails
        retries: 2                            # extra attempts per model, idempotent calls only
        timeout_s: 30                         # per attempt (to the first chunk of a stream)

`Router.call(name, task, fn)` runs `fn(loaded_model)` for the model that serves the call and
returns `(fn's result, the spec that served)`. The API routers put everything that depends on
the model into `fn` (for a stream: up to its first chunk, `kaset.api.streaming.primed`), so a
fallback happens only before anything has been sent to the client.

**Choosing a target.** With a stable key for the caller (the `x-kaset-ab-key` header, else the
API key's id, else the signed-in user's id) and `sticky: true`, the key and the route name are
hashed to a point in [0, 1) that falls into one target's share of the summed weights, so a
caller keeps getting the same variant while the weights stay the same. Without a key the
point is random.

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

**Circuit breakers**, one per upstream: a provider's `base_url` (every model served by that
server shares it), else the model's id@version. `breaker_failures` consecutive breaker
failures (upstream 5xx, timeouts, load failures, unexpected exceptions; never 429s, overload
or the caller's own errors, however many) open it; while open, calls to that upstream fail
fast (a route skips to its next candidate, a plain model name gets 503 `circuit_open` with
Retry-After); after `breaker_cooldown_s` it is half open and lets exactly one trial call
through (others still fail fast); the trial's success closes it, its failure opens it for
another cool-down. Breaker state lives in this gateway
process: replicas each learn an upstream's health on their own (a shared store would put a
network round trip on every call to save a handful of failed calls per replica).

Why not a library for the breaker: pybreaker guards sync calls (async only through Tornado);
aiobreaker, its asyncio fork, has had no release since 2021; purgatory's async API awaits a
unit of work and a message bus on every call (more than this gateway's whole per-request
budget) and lets state be shared in Redis, which is not wanted here; circuitbreaker (fabfuel)
keeps a process-global registry and lets every concurrent call through while half open
instead of one trial. The breaker below is ~50 lines, runs on the event loop only (no locks)
and costs a dict lookup per call while no upstream has ever failed.

**Spans.** Each attempt on a model is a child span of the request's (`kaset.tracing.model_call`,
"<task> <model>"), current while the model runs, so a worker's or a provider's span hangs
under it: attributes `kaset.model`, `kaset.operation` (the task), `kaset.route`, `kaset.remote`,
`kaset.outcome` (ok, or the reason below, or `caller_error`, `cancelled`); status ERROR only
when the failure is not the caller's. With tracing off it is a shared no-op context.

Cost on the hot path: a plain model name that is no route, with no breaker ever created, is
two dict lookups, a context-variable read (tracing) and a try block around the call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from kaset import tracing
from kaset.errors import InvalidRequest, ModelUnavailable, NotFound, UpstreamRateLimited, UpstreamTimeout, faults
from kaset.metrics import current_metrics
from kaset.registry.catalog import Catalog, ModelSpec, RouteSpec
from kaset.registry.handle import ModelHandle, RemoteModels
from kaset.runtimes.base import Task
from kaset.weighted import weighted_pick

if TYPE_CHECKING:
    from starlette.requests import Request

    from kaset.registry.manager import ModelManager

log = logging.getLogger(__name__)

T = TypeVar("T")
Call = Callable[[ModelHandle], Awaitable[T]]

AB_KEY_HEADER = "x-kaset-ab-key"
MODEL_HEADER = "x-kaset-model"
ROUTE_HEADER = "x-kaset-route"
# Why a call moved on (the `reason` label of kaset_fallbacks_total and kaset_retries_total):
# a name for what the error's class says (see `fallback_reason`).
Reason = Literal["error", "timeout", "unavailable", "not_installed", "rate_limited", "overloaded", "circuit_open"]

BreakerState = Literal["closed", "open", "half_open"]


class TargetNotInstalled(ModelUnavailable):
    """A route's target is in the catalog but not installed here: the route's problem, not the
    caller's (a plain model name that is not installed stays a 404)."""

    code = "model_not_installed"
    # The route's own skip: a route moves on (see `fallback_reason`), but the model did not fail.
    retryable = False
    breaker_failure = False


class CircuitOpen(ModelUnavailable):
    """The upstream's breaker is open: calls fail fast until its cool-down ends."""

    code = "circuit_open"
    # Nothing was called, so nothing failed; after Retry-After the upstream gets a trial call.
    retryable = True
    breaker_failure = False

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, -int(-self.retry_after // 1)))}


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


class Breaker:
    """One upstream's circuit breaker (consecutive failures; see the module docstring)."""

    __slots__ = ("clock", "cooldown_s", "failures", "opened_at", "state", "threshold", "trial", "upstream")

    def __init__(self, upstream: str, threshold: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        # A half-open breaker's one trial call is running.
        self.trial = False

    def admit(self) -> bool:
        """Whether a call may go to the upstream now (in half-open state: the one trial call)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
            self.trial = False
        if self.trial:
            return False
        self.trial = True
        return True

    def succeeded(self) -> None:
        if self.state != "closed":
            log.info("breaker for %s closed: a call succeeded", self.upstream)
        self.state = "closed"
        self.failures = 0
        self.trial = False

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            log.warning("breaker for %s opened after %d consecutive failure(s); failing fast for %g s",
                        self.upstream, self.failures, self.cooldown_s)
            self.state = "open"
            self.opened_at = self.clock()
            self.trial = False

    def released(self) -> None:
        """The call neither proved nor disproved the upstream (cancelled, busy, the caller's 4xx)."""
        self.trial = False

    def retry_after(self) -> float:
        """Seconds until a call may go again (the rest of the cool-down; 1 while a trial runs)."""
        if self.state == "open":
            return max(0.0, self.opened_at + self.cooldown_s - self.clock())
        return 1.0 if self.state == "half_open" else 0.0

    def current_state(self) -> BreakerState:
        """The state as a scrape should see it: open turns half-open once the cool-down is over."""
        if self.state == "open" and self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return self.state


def upstream_of(spec: ModelSpec) -> str:
    """The breaker key of a model: its provider's base URL (scheme, host, port, path; never
    credentials), else its id@version."""
    base_url = spec.params.get("base_url")
    if not base_url and spec.runtime == "gemini":
        from kaset.runtimes.gemini import DEFAULT_BASE_URL
        base_url = DEFAULT_BASE_URL
    if not isinstance(base_url, str) or not base_url:
        return spec.key
    parts = urlsplit(base_url.strip())
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def caller_key(request: Request) -> str | None:
    """The stable key that keeps a caller on one variant: `x-kaset-ab-key`, else the API key's id,
    else the signed-in user's id; None for an anonymous caller (auth off, no header)."""
    header = request.headers.get(AB_KEY_HEADER)
    if header:
        return "h:" + header[:256]
    principal = getattr(request.state, "key", None)
    if principal is None:
        return None
    key_id = getattr(principal, "key_id", None)
    return f"k:{key_id}" if key_id is not None else f"u:{getattr(principal, 'user_id', '')}"


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


class Router:
    """Serves a model name: a route (targets, fallbacks, retries) or a plain model, each call
    guarded by its upstream's breaker. One per app; state is this process's only."""

    def __init__(self, manager: ModelManager, *, breaker_failures: int = 5, breaker_cooldown_s: float = 30.0,
                 retry_backoff_s: float = 0.2, retry_max_wait_s: float = 5.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.manager = manager
        self.catalog: Catalog = manager.catalog
        self.routes: dict[str, RouteSpec] = self.catalog.routes
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
        # Models served by kaset workers (set by the gateway when it has workers): a name a ready
        # replica serves is called there, through the same routes, fallbacks and breakers.
        self.remote: RemoteModels | None = None

    # --- where a model runs -------------------------------------------------------------------

    async def handle(self, name: str, task: Task, *, local_only: bool = False) -> ModelHandle:
        """The handle that calls `name` for `task`: on a worker that serves it, else loaded here."""
        remote = self.remote
        if remote is not None and not local_only and remote.serves(name):
            spec = self.catalog.resolve(name)
            if task not in spec.tasks:
                raise InvalidRequest(f"The model '{name}' does {'/'.join(spec.tasks)}, not {task}.", param="model")
            return remote.handle(name, spec, task)
        return await self.manager.get(name, task)

    def models_for(self, task: Task) -> list[ModelSpec]:
        """Models that can serve `task` now: installed here or served by a ready worker."""
        found = {s.key: s for s in self.manager.models_for(task)}
        if self.remote is not None:
            found.update((s.key, s) for s in self.remote.specs() if task in s.tasks)
        return list(found.values())

    def default_model(self, task: Task) -> ModelSpec:
        """The model a request that names none gets: a loaded (or worker-served) one first, then
        the catalog's default, echo last."""
        ready = {m.spec.key for m in self.manager.loaded()}
        if self.remote is not None:
            ready.update(s.key for s in self.remote.specs())
        candidates = sorted(self.models_for(task), key=lambda s: (s.key not in ready, not s.default, s.id == "echo"))
        if not candidates:
            raise ModelUnavailable(f"No model for the task '{task}' is installed on this server.")
        return candidates[0]

    # --- what the API routers call ---------------------------------------------------------------

    def is_route(self, name: str) -> bool:
        return name in self.routes

    def served_name(self, spec: ModelSpec) -> str:
        """How the x-kaset-model header names a model: its id for the preferred version, else
        id@version, so every variant of an A/B split is told apart."""
        return self.catalog.name_of(spec)

    def headers(self, name: str, spec: ModelSpec) -> dict[str, str]:
        """Response headers naming the model that served `name` (and the route, when it is one)."""
        served = self.catalog.name_of(spec)
        if name in self.routes:
            return {MODEL_HEADER: served, ROUTE_HEADER: name}
        return {MODEL_HEADER: served}

    async def call(self, name: str, task: Task, fn: Call[T], *, caller: Callable[[], str | None] | None = None,
                   retry: bool = False, local_only: bool = False) -> tuple[T, ModelSpec]:
        """Run `fn` on the handle of the model that serves `name` for `task`, wherever it runs:
        (fn's result, the serving spec).

        `caller` gives the sticky key (called only for a route that needs one); `retry` says the
        call is idempotent, so a route's `retries` apply; `local_only` keeps it in this process.
        """
        route = self.routes.get(name)
        if route is not None:
            return await self._call_route(route, task, fn, caller, retry, local_only)
        # A plain model name: no choice, no fallback, no retry; only its breaker, once it has one.
        if not self.breakers:
            with tracing.model_call(name, task) as span:
                model: ModelHandle | None = None
                try:
                    model = await self.handle(name, task, local_only=local_only)
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
        spec = self.catalog.get(name)
        if spec is None:
            model = await self.manager.get(name, task)  # raises the usual 404
            return await fn(model), model.spec
        return await self._attempt(spec, name, task, fn, None, route=None, local_only=local_only), spec

    # --- routes ------------------------------------------------------------------------------------

    def pick(self, route: RouteSpec, key: str | None) -> str:
        """The target model name for one call: by the caller's hashed key, else at random."""
        return weighted_pick(route.targets, salt=route.name, key=key if route.sticky else None, rng=self._rng).model

    def candidates(self, route: RouteSpec, task: Task, key: str | None) -> list[ModelSpec]:
        """Who may serve one call, in order: the chosen target, then the fallbacks (each model once,
        only those that do `task`)."""
        seen: set[str] = set()
        found: list[ModelSpec] = []
        for name in (self.pick(route, key), *route.fallbacks):
            spec = self.catalog.get(name)
            if spec is None or spec.key in seen or task not in spec.tasks:
                continue
            seen.add(spec.key)
            found.append(spec)
        return found

    async def _call_route(self, route: RouteSpec, task: Task, fn: Call[T], caller: Callable[[], str | None] | None,
                          retry: bool, local_only: bool) -> tuple[T, ModelSpec]:
        key = caller() if caller is not None and route.sticky and len(route.targets) > 1 else None
        candidates = self.candidates(route, task, key)
        if not candidates:
            raise InvalidRequest(f"The model '{route.name}' has no model that does {task}.", param="model")
        retries = route.retries if retry else 0
        failed: tuple[str, str] | None = None  # (model, reason) of the last candidate that failed
        last_error: BaseException | None = None
        first_skip: CircuitOpen | None = None
        for spec in candidates:
            served = self.served_name(spec)
            if failed is not None:
                log.info("route %s: %s failed (%s), trying %s", route.name, failed[0], failed[1], served)
                _record_fallback(route.name, failed[0], served, failed[1])
            try:
                if retries:
                    result = await self._with_retries(spec, task, fn, route, retries, local_only)
                else:
                    result = await self._attempt(spec, spec.key, task, fn, route.timeout_s, route=route.name,
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
        served = self.served_name(spec)

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
        result: T = await retrying(self._attempt, spec, spec.key, task, fn, route.timeout_s, route=route.name,
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

    async def _attempt(self, spec: ModelSpec, name: str, task: Task, fn: Call[T], timeout_s: float | None, *,
                       route: str | None, local_only: bool = False) -> T:
        """One call of `fn` on `spec`'s handle, guarded by its upstream's breaker, in its own span.
        `route`: the route being served (a target that is not installed is then the route's
        problem, not the caller's 404), None for a plain model name."""
        served = self.served_name(spec)
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
                        model = await self.handle(name, task, local_only=local_only)
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

    # --- for /metrics ------------------------------------------------------------------------------

    def breaker_states(self) -> list[tuple[str, BreakerState]]:
        return [(upstream, b.current_state()) for upstream, b in self.breakers.items()]


def as_router(models: Router | ModelManager) -> Router:
    """A service's router: the app's own (routes, breakers, workers), or, for a script or a test
    that has only a model manager, a plain router over it."""
    if isinstance(models, Router):
        return models
    return Router(models)
