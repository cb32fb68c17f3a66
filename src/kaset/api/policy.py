"""Route policy: what the gateway does around a route, declared once, on the route itself.

Every endpoint carries a `RoutePolicy` (set with the `policy` decorator, or for a whole router
with `apply_policy`): which daily budgets its units are charged to, where it names the models
it uses (for a key's allowlist), whether it is written to the request log. The quota check
(`kaset.api.deps.authenticate`), the allowlist and the request log (`kaset.api.telemetry`) read
it from the matched route, so there is no table keyed by path to forget;
`tests/api/test_route_policy.py` enumerates every route and fails when one has no policy.

    @router.post("/v1/embeddings")
    @policy(budgets=("tokens_per_day",), model_field=True)
    async def embeddings(...): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import APIRouter
from starlette.routing import BaseRoute

Budget = Literal["tokens_per_day", "audio_seconds_per_day", "images_per_day"]
F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__kaset_policy__"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    # Daily budgets the request's units are charged to (and checked before it runs).
    budgets: tuple[Budget, ...] = ()
    # Path parameters that name a model (`/v2/models/{name}`), checked against the key's allowlist.
    model_params: tuple[str, ...] = ()
    # The JSON or form body (or the query string) has a `model` field naming the model it uses.
    model_field: bool = False
    # Written to the request log (probes and scrapes are not: they would drown it).
    logged: bool = True


# Routes about accounts, keys, jobs and pages: no model, no budget, logged.
PLAIN = RoutePolicy()
# Health probes and the metrics scrape.
PROBE = RoutePolicy(logged=False)


def policy(budgets: tuple[Budget, ...] = (), *, model_params: tuple[str, ...] = (), model_field: bool = False,
           logged: bool = True) -> Callable[[F], F]:
    """Declare the policy of the endpoint it decorates (above or below the route decorator)."""
    declared = RoutePolicy(budgets=budgets, model_params=model_params, model_field=model_field, logged=logged)

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, declared)
        return endpoint

    return mark


def apply_policy(router: APIRouter, declared: RoutePolicy) -> APIRouter:
    """Give every route of `router` that declares none the policy `declared` (a router whose
    routes are all alike: admin, auth, health)."""
    for route in router.routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None and not hasattr(endpoint, _ATTRIBUTE):
            setattr(endpoint, _ATTRIBUTE, declared)
    return router


def policy_of(route: object) -> RoutePolicy | None:
    """The policy of a matched route (`request.scope["route"]`), None when it declares none."""
    return getattr(getattr(route, "endpoint", None), _ATTRIBUTE, None)


def endpoints(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every endpoint route of an app or router, through included routers (FastAPI keeps them
    nested), not mounts (static files, sub-apps)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from endpoints(included.routes)
        elif hasattr(route, "endpoint"):
            yield route
