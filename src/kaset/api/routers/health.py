"""Liveness and readiness, in Kaset's own shape and the Open Inference Protocol's (/v2)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kaset import __version__
from kaset.api.deps import ModelsDep, SettingsDep
from kaset.api.policy import PROBE, apply_policy, policy
from kaset.config import Settings
from kaset.registry.manager import ModelManager

router = APIRouter(tags=["health"])


# A start-up model unloaded on purpose (idle TTL, LRU eviction, an admin) still counts as
# ready: it reloads on its next request. Were it not, an idle replica would fail readiness,
# get no traffic, and never be asked to reload it.
STANDBY_REASONS = frozenset({"idle", "lru", "admin"})


def readiness(settings: Settings, models: ModelManager) -> tuple[bool, dict[str, str]]:
    """Ready when every model chosen to load at start is loaded (or on standby), and each one's state."""
    states: dict[str, str] = {}
    ready = True
    for name in settings.models or []:
        spec = models.catalog.get(name)
        if spec is None:
            states[name], ready = "unknown", False
            continue
        state = models.state(spec)
        reason = models.unload_reason(spec)
        if state == "unloading" or (state == "installed" and reason in STANDBY_REASONS):
            states[name] = f"standby ({reason or 'unloading'})"
        else:
            states[name] = state
            ready = ready and state == "loaded"
    return ready, states


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready")
async def ready(settings: SettingsDep, models: ModelsDep) -> JSONResponse:
    """Ready when every model chosen to load at start is loaded."""
    is_ready, states = readiness(settings, models)
    return JSONResponse({"status": "ready" if is_ready else "loading", "models": states},
                        status_code=200 if is_ready else 503)


@router.get("/v2/health/live")
async def v2_live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready")
async def v2_ready(settings: SettingsDep, models: ModelsDep) -> JSONResponse:
    is_ready, _ = readiness(settings, models)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@policy()
@router.get("/v2")
async def v2_server_metadata() -> dict[str, object]:
    return {"name": "kaset", "version": __version__, "extensions": []}


apply_policy(router, PROBE)
