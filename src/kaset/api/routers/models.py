"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from kaset.api.deps import Services, services
from kaset.api.schemas.models import BatchingInfo, ModelList, ModelObject
from kaset.errors import ModelNotFound
from kaset.registry.catalog import ModelSpec
from kaset.registry.manager import ModelManager

router = APIRouter(tags=["models"])


def _model_object(manager: ModelManager, spec: ModelSpec, name: str | None = None) -> ModelObject:
    loaded = {m.spec.key: m for m in manager.loaded()}
    created = int(loaded[spec.key].loaded_at) if spec.key in loaded else 0
    batcher = loaded[spec.key].batcher if spec.key in loaded else None
    canonical = manager.catalog.name_of(spec)
    return ModelObject(
        id=name or canonical, created=created, tasks=list(spec.tasks), runtime=spec.runtime, version=spec.version,
        languages=spec.languages, license=spec.license, state=manager.state(spec), aliases=spec.aliases,
        alias_of=canonical if name and name != canonical else None,
        batching=BatchingInfo(**batcher.stats.snapshot()) if batcher is not None else None,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(svc: Services = Depends(services)) -> ModelList:
    """Models a client can call now: loaded ones and installed ones that load on first use.

    Aliases are listed too, so clients that pick a model by OpenAI's names find them.
    """
    data = []
    for spec in svc.models.available():
        data.append(_model_object(svc.models, spec))
        if svc.models.catalog.is_preferred(spec):
            data.extend(_model_object(svc.models, spec, alias) for alias in spec.aliases)
    return ModelList(data=data)


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, svc: Services = Depends(services)) -> ModelObject:
    spec = svc.models.resolve(model_id)
    if spec not in svc.models.available():
        raise ModelNotFound(f"The model '{model_id}' is not installed on this server.", param="model")
    return _model_object(svc.models, spec, model_id)
