"""Every route declares its policy (kaset.api.policy): daily budgets, where it names models,
whether it is logged. A new endpoint without one fails here instead of silently skipping its
daily budget or the key's model allowlist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from kaset.api.deps import authenticate
from kaset.api.policy import RoutePolicy, endpoints, policy_of
from kaset.app import create_app
from kaset.config import Settings
from kaset.workers.app import create_worker_app

# Model routes that draw on no daily budget, and why (a decision, not an omission).
NO_BUDGET = {
    "/v1/models": "lists models, runs none",
    "/v1/models/{model_id:path}": "describes a model, runs none",
    "/v1/audio/voices": "lists voices, speaks nothing",
    "/v1/translate": "translation is counted in characters, which no daily budget covers",
    "/v1/translate/languages": "lists language pairs",
    "/v1/listings/schema": "a static JSON schema",
    "/v2/models/{name}": "model metadata",
    "/v2/models/{name}/versions/{version}": "model metadata",
    "/v2/models/{name}/ready": "readiness",
    "/v2/models/{name}/versions/{version}/ready": "readiness",
    "/v1/usage": "the caller's own usage report",
    "/v1/limits": "the caller's own limits",
    "/v1/jobs": "async jobs are not charged to daily budgets yet (docs/limits.md)",
    "/v1/jobs/{job_id}": "reads a job",
    "/v1/jobs/{job_id}/result": "reads a job's result",
    "/v1/jobs/{job_id}/cancel": "cancels a job",
    "/v1/jobs/{job_id}/retry": "async jobs are not charged to daily budgets yet (docs/limits.md)",
}


def _apps(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models")
    return {"gateway": create_app(settings), "worker": create_worker_app(settings, [])}


def _routes(tmp_path: Path) -> list[tuple[str, Any]]:
    found = []
    for name, app in _apps(tmp_path).items():
        for route in endpoints(app.routes):
            if getattr(route.endpoint, "__module__", "").startswith("fastapi."):
                continue  # FastAPI's own /docs and /openapi.json
            found.append((name, route))
    assert len(found) > 60
    return found


def _secured(route: Any) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and any(d.call is authenticate for d in _all_dependencies(dependant))


def _all_dependencies(dependant: Any) -> list[Any]:
    found = list(dependant.dependencies)
    for child in dependant.dependencies:
        found.extend(_all_dependencies(child))
    return found


def test_every_route_declares_a_policy(tmp_path: Path) -> None:
    missing = [f"{app} {route.path}" for app, route in _routes(tmp_path) if policy_of(route) is None]
    assert not missing, f"routes without a policy (kaset.api.policy): {missing}"


def test_a_body_that_names_a_model_is_checked_against_the_allowlist(tmp_path: Path) -> None:
    for app, route in _routes(tmp_path):
        declared = policy_of(route)
        assert isinstance(declared, RoutePolicy)
        body = getattr(route, "body_field", None)
        fields = getattr(getattr(body, "field_info", None), "annotation", None)
        model_fields = getattr(fields, "model_fields", {}) if fields is not None else {}
        if "model" in model_fields:
            assert declared.model_field, f"{app} {route.path}: its body has a `model` field the policy ignores"
        params = set(route.param_convertors) if hasattr(route, "param_convertors") else set()
        assert set(declared.model_params) <= params, f"{app} {route.path}: model_params not in its path"


def test_model_routes_draw_on_a_budget_unless_exempt(tmp_path: Path) -> None:
    for app, route in _routes(tmp_path):
        if app != "gateway" or not _secured(route):
            continue
        declared = policy_of(route)
        assert declared is not None
        if declared.budgets:
            assert route.path not in NO_BUDGET, f"{route.path} has budgets and an exemption"
        else:
            assert route.path in NO_BUDGET, f"{route.path} runs models for a caller but draws on no daily budget"


def test_probes_and_scrapes_are_not_logged(tmp_path: Path) -> None:
    unlogged = {route.path for _, route in _routes(tmp_path) if not policy_of(route).logged}  # type: ignore[union-attr]
    assert unlogged == {"/metrics", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"}


@pytest.mark.parametrize("path, budgets", [
    ("/v1/chat/completions", ("tokens_per_day", "images_per_day")),
    ("/v1/audio/transcriptions", ("audio_seconds_per_day",)),
    ("/v1/crop-doctor", ("images_per_day", "audio_seconds_per_day", "tokens_per_day")),
    ("/v2/models/{name}/infer", ("images_per_day",)),
    ("/v1/voice/stream", ("audio_seconds_per_day", "tokens_per_day")),
])
def test_budgets_of_known_routes(tmp_path: Path, path: str, budgets: tuple[str, ...]) -> None:
    declared = {route.path: policy_of(route) for app, route in _routes(tmp_path) if app == "gateway"}
    assert declared[path] is not None and declared[path].budgets == budgets  # type: ignore[union-attr]


def test_a_matched_route_carries_its_policy(tmp_path: Path) -> None:
    """What `authenticate` and the request log read at request time: the matched route's endpoint."""
    app = _apps(tmp_path)["gateway"]
    chat = next(r for r in endpoints(app.routes) if isinstance(r, APIRoute) and r.path == "/v1/chat/completions")
    assert policy_of(chat) == RoutePolicy(budgets=("tokens_per_day", "images_per_day"), model_field=True)
