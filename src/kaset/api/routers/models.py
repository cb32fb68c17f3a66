"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kaset.api.deps import ModelsDep, RouterDep
from kaset.api.policy import policy
from kaset.api.schemas.models import BatchingInfo, ModelObject
from kaset.auth.allowlist import allows
from kaset.auth.principal import Principal
from kaset.errors import ModelNotFound
from kaset.registry.catalog import ModelSpec, RouteSpec
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router

router = APIRouter(tags=["models"])


class LifecycleInfo(BaseModel):
    """Where the model is in its lifecycle (kaset.registry.lifecycle)."""

    state: str
    pinned: bool = Field(description="Never unloaded for idleness or to make room under the memory budget.")
    max_concurrent: int
    max_queue: int = Field(description="Calls that may wait beyond the running ones; more get 429.")
    idle_unload_s: float = Field(description="Unloaded after this many seconds without a call; 0: never.")
    memory_mb: float | None = Field(description="Memory measured at its (last) load: RSS growth while loading, "
                                                "or its files' size if larger.")
    loaded_at: float | None = None
    last_used: float | None = Field(default=None, description="Epoch seconds of its last call or lookup.")
    in_flight: int = Field(description="Calls running or waiting.")
    queued: int = Field(description="Calls waiting beyond what the running calls hold.")
    mean_call_ms: float | None = None
    reason: str | None = Field(default=None, description="Why it is not loaded: its load failure, or what "
                                                         "unloaded it (idle, lru, admin, budget).")


class RouteInfo(BaseModel):
    """A catalog route (kaset.registry.routing): a public name served by weighted targets."""

    targets: dict[str, float] = Field(description="Model -> weight.")
    fallbacks: list[str]
    retries: int


class ModelDetail(ModelObject):
    lifecycle: LifecycleInfo | None = None
    route: RouteInfo | None = Field(default=None, description="Set when this name is a route; the other fields "
                                                              "describe its first target.")


class ModelDetailList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelDetail]


def _model_object(manager: ModelManager, spec: ModelSpec, name: str | None = None) -> ModelDetail:
    loaded = {m.spec.key: m for m in manager.loaded()}
    created = int(loaded[spec.key].loaded_at) if spec.key in loaded else 0
    batcher = loaded[spec.key].batcher if spec.key in loaded else None
    canonical = manager.catalog.name_of(spec)
    status = manager.status(spec)
    return ModelDetail(
        id=name or canonical, created=created, tasks=list(spec.tasks), runtime=spec.runtime, version=spec.version,
        languages=spec.languages, license=spec.license, state=status.state, aliases=spec.aliases,
        alias_of=canonical if name and name != canonical else None,
        batching=BatchingInfo(**batcher.stats.snapshot()) if batcher is not None else None,
        lifecycle=LifecycleInfo(**vars(status)),
    )


def _worker_models(routing: Router) -> list[ModelSpec]:
    """Models that ready worker replicas serve for this gateway (kaset.workers)."""
    remote = routing.remote
    return list(remote.specs()) if remote is not None else []


def _remote_object(manager: ModelManager, spec: ModelSpec) -> ModelDetail:
    detail = _model_object(manager, spec)
    detail.state = "remote"  # loaded on a worker replica, not in this process
    detail.lifecycle = None
    return detail


def _route_object(manager: ModelManager, route: RouteSpec) -> ModelDetail | None:
    spec = manager.catalog.get(route.targets[0].model)
    if spec is None:
        return None
    detail = _model_object(manager, spec, route.name)
    detail.alias_of = None
    detail.route = RouteInfo(targets={t.model: t.weight for t in route.targets}, fallbacks=route.fallbacks,
                             retries=route.retries)
    return detail


@policy()
@router.get("/v1/models", response_model=ModelDetailList)
async def list_models(request: Request, models: ModelsDep, routing: RouterDep) -> ModelDetailList:
    """Models a client can call now: loaded ones and installed ones that load on first use.

    Aliases and catalog routes are listed too, so clients that pick a model by OpenAI's names
    find them. A key with a model allowlist sees only the names it may call.
    """
    principal: Principal | None = getattr(request.state, "key", None)
    allowed = principal.allowed_models if principal is not None else None
    catalog = models.catalog
    remote = {spec.key: spec for spec in _worker_models(routing)}
    local = [spec for spec in models.available() if spec.key not in remote]
    data = []
    for spec in [*local, *remote.values()]:
        data.append(_remote_object(models, spec) if spec.key in remote else _model_object(models, spec))
        if catalog.is_preferred(spec):
            data.extend(_model_object(models, spec, alias) for alias in spec.aliases)
    listed = {d.id for d in data}
    for route in catalog.routes.values():
        if route.name not in listed and (detail := _route_object(models, route)) is not None:
            data.append(detail)
    if allowed is not None:
        data = [d for d in data if allows(allowed, d.id, catalog)]
    return ModelDetailList(data=data)


@policy(model_params=("model_id",))
@router.get("/v1/models/{model_id:path}", response_model=ModelDetail)
async def get_model(model_id: str, models: ModelsDep, routing: RouterDep) -> ModelDetail:
    route = models.catalog.routes.get(model_id)
    if route is not None and models.catalog.get(model_id) is None:
        detail = _route_object(models, route)
        if detail is not None:
            return detail
    spec = models.resolve(model_id)
    # As the router does: a model a worker serves is called there, even if installed here too.
    if any(served.key == spec.key for served in _worker_models(routing)):
        detail = _remote_object(models, spec)
        detail.id = model_id
        return detail
    if spec in models.available():
        return _model_object(models, spec, model_id)
    raise ModelNotFound(f"The model '{model_id}' is not installed on this server.", param="model")
