"""FastAPI dependencies: the app's services and authentication."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from kaset.api.policy import PLAIN, RoutePolicy, policy_of
from kaset.auth.allowlist import ensure_allowed
from kaset.auth.identity import Identity
from kaset.auth.keys import KeyStore
from kaset.auth.principal import Principal
from kaset.config import Settings
from kaset.errors import AuthenticationFailed, PermissionDenied, UnsupportedMediaType
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.describe import DescribeService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import SpeechService
from kaset.quotas.enforcer import ADMISSION_SCOPE_KEY, QuotaEnforcer
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router
from kaset.store.db import Database
from kaset.store.spoken_replies import MemorySpokenReplies, SpokenReplies


@dataclass
class Services:
    """Everything a request handler may need; built in the app's lifespan."""

    settings: Settings
    db: Database
    keys: KeyStore
    models: ModelManager
    advisor: AdviceService
    diagnoser: DiagnosisService
    describer: DescribeService
    # Serves model names: routes (A/B, fallbacks, retries) and per-upstream circuit breakers.
    router: Router
    # Users, keys, sign-in tokens; `keys` is `identity.keys`, kept for existing callers.
    identity: Identity
    # Per-key and per-user rate limits, concurrency and daily budgets.
    quotas: QuotaEnforcer
    # Hearing and speaking for pipelines (voice assistant, chat with audio, crop doctor, ULCA).
    speech: SpeechService
    # Spoken chat replies' transcripts by audio id (shared through Redis when configured).
    spoken_replies: SpokenReplies = field(default_factory=MemorySpokenReplies)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def authenticate(request: Request) -> Principal | None:
    """The model API's guard: a valid key or access token, and the key's model allowlist.

    The allowlist is enforced here, the one dependency every model route passes through, so no
    router can forget it. Where a request names its model is its route's policy
    (kaset.api.policy): a path parameter (`/v2/models/{name}`) or the `model` field of the body
    FastAPI has already parsed for the route (JSON or form), which Starlette caches on the
    request: reading it costs a dict lookup, and only for keys that have an allowlist. The
    policy's daily budgets are what the quota check admits the request under. Routes that pick
    models themselves (diagnose, advice) or read their body raw can call `check_model_allowed`
    with the names they use.
    """
    svc: Services = request.app.state.services
    if not svc.settings.auth_enabled:
        return None
    principal = await _principal(request, svc)
    request.state.key = principal
    declared = policy_of(request.scope.get("route")) or PLAIN
    if principal.allowed_models is not None:
        for name in await _requested_models(request, declared):
            ensure_allowed(principal, name, svc.models.catalog)
    admission = await svc.quotas.admit(principal, declared.budgets)
    if admission is not None:
        # The gateway middleware adds its headers to the response and settles it when the
        # response is done (slots back, units charged to the daily budgets).
        request.scope[ADMISSION_SCOPE_KEY] = admission
    return principal


async def _principal(request: Request, svc: Services) -> Principal:
    header = request.headers.get("authorization", "")
    if not header:
        raise AuthenticationFailed(
            "No API key provided. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationFailed("Malformed Authorization header. Use 'Authorization: Bearer <key>'.")
    return await svc.identity.authenticate(credential)


async def _requested_models(request: Request, declared: RoutePolicy) -> list[str]:
    """The models the request names where its route's policy says it names them."""
    names = [str(request.path_params[p]) for p in declared.model_params if p in request.path_params]
    if not declared.model_field:
        return names
    if "model" in request.query_params:  # GET routes about one model (/v1/audio/voices?model=)
        names.append(request.query_params["model"])
    route = request.scope.get("route")
    # Only bodies FastAPI parsed already (routes that declare a body): never a second parse, and
    # never a raw binary body (the v2 infer route names its model in the path).
    if getattr(route, "body_field", None) is None:
        return names
    content_type = request.headers.get("content-type", "").lower()
    body: Any = None
    try:
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            body = await request.form()
        elif not content_type or content_type.split(";")[0].strip().endswith(("/json", "+json")):
            body = await request.json()
    except ValueError:
        return names  # FastAPI answers the bad body itself
    model = body.get("model") if hasattr(body, "get") else None
    if isinstance(model, str):
        names.append(model)
    return names


def check_model_allowed(request: Request, model: str) -> None:
    """For routers that choose or receive a model name outside `authenticate`'s view: 403 when
    the caller's key has an allowlist that does not cover `model`."""
    principal: Principal | None = getattr(request.state, "key", None)
    if principal is not None and principal.allowed_models is not None:
        svc: Services = request.app.state.services
        ensure_allowed(principal, model, svc.models.catalog)


async def _require_role(request: Request, roles: tuple[str, ...]) -> Principal:
    # Always authenticated, even with KASET_AUTH_ENABLED=false: turning auth off for the model
    # API must not open user and key management to anyone who can reach the port.
    svc: Services = request.app.state.services
    principal = await _principal(request, svc)
    request.state.key = principal
    if principal.role not in roles:
        raise PermissionDenied(
            f"This needs the {' or '.join(roles)} role; '{principal.username}' has the '{principal.role}' role.",
            code="insufficient_role")
    return principal


async def require_admin(request: Request) -> Principal:
    return await _require_role(request, ("admin",))


async def require_key_manager(request: Request) -> Principal:
    """Admins and developers: people who may manage (their own) API keys."""
    return await _require_role(request, ("admin", "developer"))


def request_id(request: Request) -> str | None:
    """The id the gateway middleware gave this request (the client's x-request-id, or a new one)."""
    rid = request.scope.get("kaset.request_id") or request.headers.get("x-request-id")
    return str(rid)[:128] if rid else None


async def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.split(";")[0].strip().lower().endswith(("/json", "+json")):
        raise UnsupportedMediaType(
            f"This endpoint takes a JSON body; got content type '{content_type or 'none'}'. "
            "Send 'Content-Type: application/json'."
        )


async def require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"This endpoint takes a multipart/form-data upload; got '{content_type or 'none'}'."
        )
