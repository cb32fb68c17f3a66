"""Routing for the model APIs: what a model name means (a route with weighted targets for A/B
and canaries, and fallbacks; or one plain model) and where its model runs (a worker or here).

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

**Serving the call** is the `FallbackCaller`'s (`kaset.registry.fallbacks`): whose fault a
failure is, fallbacks down the candidates, retries, and a span per attempt. Each attempt is
guarded by its upstream's circuit breaker (`kaset.registry.breakers`).

Cost on the hot path: a plain model name that is no route, with no breaker ever created, is
two dict lookups, a context-variable read (tracing) and a try block around the call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.registry.breakers import Breaker, BreakerState
from kaset.registry.catalog import Catalog, ModelSpec, RouteSpec
from kaset.registry.fallbacks import Call, FallbackCaller
from kaset.registry.handle import ModelHandle, RemoteModels
from kaset.runtimes.base import Task
from kaset.weighted import weighted_pick

if TYPE_CHECKING:
    from starlette.requests import Request

    from kaset.registry.manager import ModelManager

T = TypeVar("T")

AB_KEY_HEADER = "x-kaset-ab-key"
MODEL_HEADER = "x-kaset-model"
ROUTE_HEADER = "x-kaset-route"


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
        self._rng = rng
        # Runs each call: attempts under the breakers, retries, fallbacks.
        self.calls = FallbackCaller(self.catalog, self.handle, breaker_failures=breaker_failures,
                                    breaker_cooldown_s=breaker_cooldown_s, retry_backoff_s=retry_backoff_s,
                                    retry_max_wait_s=retry_max_wait_s, sleep=sleep, clock=clock, rng=rng)
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
            key = caller() if caller is not None and route.sticky and len(route.targets) > 1 else None
            candidates = self.candidates(route, task, key)
            if not candidates:
                raise InvalidRequest(f"The model '{route.name}' has no model that does {task}.", param="model")
            return await self.calls.call_route(route, candidates, task, fn, retry=retry, local_only=local_only)
        # A plain model name: no choice, no fallback, no retry; only its breaker, once it has one.
        if not self.calls.breakers:
            return await self.calls.call_unguarded(name, task, fn, local_only=local_only)
        spec = self.catalog.get(name)
        if spec is None:
            model = await self.manager.get(name, task)  # raises the usual 404
            return await fn(model), model.spec
        return await self.calls.attempt(spec, name, task, fn, None, route=None, local_only=local_only), spec

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

    # --- circuit breakers (kaset.registry.breakers), for /metrics and tests ------------------------

    @property
    def breakers(self) -> dict[str, Breaker]:
        """Each upstream's breaker, created on its first failure."""
        return self.calls.breakers

    def breaker_states(self) -> list[tuple[str, BreakerState]]:
        return [(upstream, b.current_state()) for upstream, b in self.calls.breakers.items()]


def as_router(models: Router | ModelManager) -> Router:
    """A service's router: the app's own (routes, breakers, workers), or, for a script or a test
    that has only a model manager, a plain router over it."""
    if isinstance(models, Router):
        return models
    return Router(models)
