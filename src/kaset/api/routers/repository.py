"""Triton's model repository extension, for admins: list the models, load and unload them.

* `POST /v2/repository/index` (body optional, `{"ready": true}` for the loaded ones only): every
  installed model as `{name, version, state, reason}`, state READY, LOADING, UNLOADING or
  UNAVAILABLE (with the reason: not loaded yet, the load failure, or what unloaded it).
* `POST /v2/repository/models/{name}/load` and `.../unload`: 200 with an empty body, as Triton
  answers; errors in Kaset's OpenAI-style envelope. Loading respects the memory budget (503
  when the model does not fit); unloading waits for the model's running and queued calls, and
  works on pinned models too. A model an admin unloaded loads again on its next request unless
  lazy loading is off (KASET_LAZY_LOAD=false).

Unlike Triton, every model of the catalog is listed (chat, speech, ...), not only the ones
served over /v2 inference. Each load and unload is written to the audit log.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from kaset.api.deps import AdminDep, DatabaseDep, ModelsDep, request_id, require_admin
from kaset.api.policy import policy
from kaset.auth import audit
from kaset.auth.principal import Principal
from kaset.errors import InvalidRequest, ModelNotFound
from kaset.registry.catalog import ModelSpec
from kaset.registry.manager import ModelManager
from kaset.store.db import Database

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v2/repository", tags=["model repository"], dependencies=[Depends(require_admin)])

TritonState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
_STATES: dict[str, TritonState] = {"loaded": "READY", "loading": "LOADING", "unloading": "UNLOADING"}


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ready: bool = False


class IndexEntry(BaseModel):
    name: str
    version: str
    state: TritonState
    reason: str


class ModelControlRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    parameters: dict[str, Any] = Field(default_factory=dict)


def _entry(manager: ModelManager, spec: ModelSpec) -> IndexEntry:
    state = manager.state(spec)
    reason = ""
    if state not in _STATES:
        failure = manager.failure(spec)
        unloaded = manager.unload_reason(spec)
        if failure:
            reason = f"failed to load: {failure}"
        elif unloaded:
            comes_back = manager.lazy_load or unloaded in ("idle", "lru")
            reason = f"unloaded ({unloaded})" + ("; loads again on its next request" if comes_back else "")
        else:
            reason = "not loaded; loads on its first request" if manager.lazy_load else "not loaded"
    return IndexEntry(name=spec.id, version=spec.version, state=_STATES.get(state, "UNAVAILABLE"), reason=reason)


@policy()
@router.post("/index", response_model=list[IndexEntry])
async def repository_index(models: ModelsDep, body: IndexRequest | None = Body(default=None)) -> list[IndexEntry]:
    entries = [_entry(models, spec) for spec in models.catalog if models.state(spec) != "not_installed"]
    if body is not None and body.ready:
        entries = [e for e in entries if e.state == "READY"]
    return entries


def _installed(models: ModelManager, name: str) -> ModelSpec:
    spec = models.resolve(name)
    if not models.repository.is_installed(spec):
        raise ModelNotFound(f"The model '{name}' is in the catalog but not installed on this server. Install it "
                            f"with: kaset models install {models.catalog.name_of(spec)}", param="name")
    return spec


async def _audit(db: Database, request: Request, principal: Principal, action: str, spec: ModelSpec) -> None:
    # After the action, and never failing it: the model is loaded or unloaded either way.
    try:
        async with db.sessions() as session, session.begin():
            audit.record(session, principal.actor(request_id(request)), action, "model", spec.key)
    except Exception:
        log.exception("could not write the audit row for %s of %s", action, spec.key)


@policy(model_params=("name",))
@router.post("/models/{name}/load")
async def load_model(name: str, request: Request, principal: AdminDep, models: ModelsDep, db: DatabaseDep,
                     body: ModelControlRequest | None = Body(default=None)) -> Response:
    if body is not None and body.parameters:
        raise InvalidRequest("Kaset loads a model as its catalog entry describes it; load parameters (config, "
                             f"files) are not supported: {', '.join(sorted(body.parameters))}.", param="parameters")
    spec = _installed(models, name)
    await models.load(spec.key, reason="admin")
    await _audit(db, request, principal, "model.load", spec)
    return Response(status_code=200)


@policy(model_params=("name",))
@router.post("/models/{name}/unload")
async def unload_model(name: str, request: Request, principal: AdminDep, models: ModelsDep, db: DatabaseDep,
                       body: ModelControlRequest | None = Body(default=None)) -> Response:
    # Triton's `unload_dependents` means nothing here (no ensembles); other parameters neither.
    spec = models.resolve(name)
    if await models.unload(spec.key, reason="admin"):
        await _audit(db, request, principal, "model.unload", spec)
    return Response(status_code=200)
