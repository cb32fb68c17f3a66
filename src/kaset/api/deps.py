"""FastAPI dependencies: the app's services, one narrow typed dependency each, and authentication.

A process puts on `app.state` what its routes need (`provide_state`, at start-up) and each
handler declares only the services it uses, e.g. `async def f(router: RouterDep, settings:
SettingsDep)`. Every provider is an `async def` reading one attribute of `app.state`: FastAPI
runs a plain `def` dependency in its thread pool, far slower than the lookup itself. A route
that needs a service the process does not provide fails the process's start
(`require_state`), not a request: a model worker provides no identity, limits or database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from kaset.api.policy import PLAIN, RoutePolicy, policy_of
from kaset.auth.allowlist import ensure_allowed
from kaset.auth.identity import Identity
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
from kaset.store.spoken_replies import SpokenReplies

F = TypeVar("F", bound=Callable[..., Any])

# The app.state attributes each dependency (or guard) reads, for `require_state`.
_READS: dict[Callable[..., Any], tuple[str, ...]] = {}
_USES_ATTRIBUTE = "__kaset_state__"


def _reads(*names: str) -> Callable[[F], F]:
    def mark(call: F) -> F:
        _READS[call] = names
        return call

    return mark


# --- the services, one dependency each -------------------------------------------------------


@_reads("settings")
async def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


@_reads("models")
async def get_models(conn: HTTPConnection) -> ModelManager:
    models: ModelManager = conn.app.state.models
    return models


@_reads("router")
async def get_router(conn: HTTPConnection) -> Router:
    """Serves model names: routes (A/B, fallbacks, retries), breakers, local and remote handles."""
    router: Router = conn.app.state.router
    return router


@_reads("speech")
async def get_speech(conn: HTTPConnection) -> SpeechService:
    """Hearing and speaking for pipelines (voice assistant, chat with audio, crop doctor, ULCA)."""
    speech: SpeechService = conn.app.state.speech
    return speech


@_reads("spoken_replies")
async def get_spoken_replies(conn: HTTPConnection) -> SpokenReplies:
    """Spoken chat replies' transcripts by audio id (shared through Redis when configured)."""
    spoken: SpokenReplies = conn.app.state.spoken_replies
    return spoken


@_reads("describer")
async def get_describer(conn: HTTPConnection) -> DescribeService:
    describer: DescribeService = conn.app.state.describer
    return describer


@_reads("advisor")
async def get_advisor(conn: HTTPConnection) -> AdviceService:
    advisor: AdviceService = conn.app.state.advisor
    return advisor


@_reads("diagnoser")
async def get_diagnoser(conn: HTTPConnection) -> DiagnosisService:
    diagnoser: DiagnosisService = conn.app.state.diagnoser
    return diagnoser


@_reads("identity")
async def get_identity(conn: HTTPConnection) -> Identity:
    """Users, keys, sign-in tokens (the gateway only)."""
    identity: Identity = conn.app.state.identity
    return identity


@_reads("quotas")
async def get_quotas(conn: HTTPConnection) -> QuotaEnforcer:
    """Per-key and per-user rate limits, concurrency and daily budgets (the gateway only)."""
    quotas: QuotaEnforcer = conn.app.state.quotas
    return quotas


@_reads("db")
async def get_database(conn: HTTPConnection) -> Database:
    """The gateway's database: users, keys, audit and request logs (the gateway only)."""
    db: Database = conn.app.state.db
    return db


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
RouterDep = Annotated[Router, Depends(get_router)]
SpeechDep = Annotated[SpeechService, Depends(get_speech)]
SpokenRepliesDep = Annotated[SpokenReplies, Depends(get_spoken_replies)]
DescriberDep = Annotated[DescribeService, Depends(get_describer)]
AdvisorDep = Annotated[AdviceService, Depends(get_advisor)]
DiagnoserDep = Annotated[DiagnosisService, Depends(get_diagnoser)]
IdentityDep = Annotated[Identity, Depends(get_identity)]
QuotasDep = Annotated[QuotaEnforcer, Depends(get_quotas)]
DatabaseDep = Annotated[Database, Depends(get_database)]


def uses_state(*providers: Callable[..., Any]) -> Callable[[F], F]:
    """Declare services an endpoint awaits itself (`await get_speech(request)`) rather than as
    parameters: ones only some requests need, on a hot route where each declared dependency
    costs every request FastAPI's solving. `require_state` checks them like parameters."""
    names = tuple(name for provider in providers for name in _READS[provider])

    def mark(endpoint: F) -> F:
        setattr(endpoint, _USES_ATTRIBUTE, names)
        return endpoint

    return mark


# --- what a process provides -------------------------------------------------------------------


def provide_state(app: FastAPI, *, settings: Settings, models: ModelManager, router: Router, speech: SpeechService,
                  spoken_replies: SpokenReplies, describer: DescribeService, advisor: AdviceService | None = None,
                  diagnoser: DiagnosisService | None = None, identity: Identity | None = None,
                  quotas: QuotaEnforcer | None = None, db: Database | None = None) -> None:
    """Put the process's services where the dependencies read them, then check that every
    route finds what it needs (`require_state`). Services left None are not provided."""
    state = app.state
    state.settings, state.models, state.router = settings, models, router
    state.speech, state.spoken_replies, state.describer = speech, spoken_replies, describer
    optional = {"advisor": advisor, "diagnoser": diagnoser, "identity": identity, "quotas": quotas, "db": db}
    for name, service in optional.items():
        if service is not None:
            setattr(state, name, service)
    require_state(app)


def require_state(app: FastAPI) -> None:
    """RuntimeError naming each route that needs an app.state service this app does not provide."""
    missing = sorted({f"{path}: app.state.{name}" for path, name in _needs(app.router.routes, ())
                      if not hasattr(app.state, name)})
    if missing:
        raise RuntimeError("Routes need services this process does not provide (add them to provide_state, or "
                           "do not mount these routes here): " + "; ".join(missing))


def _needs(routes: Iterable[BaseRoute], inherited: tuple[Callable[..., Any], ...]) -> Iterator[tuple[str, str]]:
    """(path, app.state name) for every service a route's dependencies or endpoint read."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            guards = tuple(d.dependency for d in getattr(context, "dependencies", ()) if d.dependency is not None)
            yield from _needs(included.routes, inherited + guards)
            continue
        dependant: Dependant | None = getattr(route, "dependant", None)
        if dependant is None:
            continue
        path = str(getattr(route, "path", "?"))
        calls = [*inherited, *_calls(dependant)]
        for call in calls:
            for name in _READS.get(call, ()):
                yield path, name
        for name in getattr(getattr(route, "endpoint", None), _USES_ATTRIBUTE, ()):
            yield path, name


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


# --- authentication ------------------------------------------------------------------------------


@_reads("settings", "identity", "quotas", "models")
async def authenticate(request: Request) -> Principal | None:
    """The model API's guard: a valid key or access token, and the key's model allowlist.

    The allowlist is enforced here, the one dependency every model route passes through, so no
    router can forget it. Where a request names its model is its route's policy
    (kaset.api.policy): a path parameter (`/v2/models/{name}`) or the `model` field of the body
    FastAPI has already parsed for the route (JSON or form), which Starlette caches on the
    request: reading it costs a dict lookup, and only for keys that have an allowlist. The
    policy's daily budgets are what the quota check admits the request under. Routes that pick
    models themselves (diagnose, advice) or read their body raw can call `check_model_allowed`
    with the names they use. It reads app.state itself rather than through sub-dependencies:
    on every model route, each sub-dependency would cost a solving step.
    """
    state = request.app.state
    settings: Settings = state.settings
    if not settings.auth_enabled:
        return None
    identity: Identity = state.identity
    principal = await _principal(request, identity)
    request.state.key = principal
    declared = policy_of(request.scope.get("route")) or PLAIN
    if principal.allowed_models is not None:
        models: ModelManager = state.models
        for name in await _requested_models(request, declared):
            ensure_allowed(principal, name, models.catalog)
    quotas: QuotaEnforcer = state.quotas
    admission = await quotas.admit(principal, declared.budgets)
    if admission is not None:
        # The gateway middleware adds its headers to the response and settles it when the
        # response is done (slots back, units charged to the daily budgets).
        request.scope[ADMISSION_SCOPE_KEY] = admission
    return principal


async def _principal(request: Request, identity: Identity) -> Principal:
    header = request.headers.get("authorization", "")
    if not header:
        raise AuthenticationFailed(
            "No API key provided. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationFailed("Malformed Authorization header. Use 'Authorization: Bearer <key>'.")
    return await identity.authenticate(credential)


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
        models: ModelManager = request.app.state.models
        ensure_allowed(principal, model, models.catalog)


async def _require_role(request: Request, roles: tuple[str, ...]) -> Principal:
    # Always authenticated, even with KASET_AUTH_ENABLED=false: turning auth off for the model
    # API must not open user and key management to anyone who can reach the port.
    identity: Identity = request.app.state.identity
    principal = await _principal(request, identity)
    request.state.key = principal
    if principal.role not in roles:
        raise PermissionDenied(
            f"This needs the {' or '.join(roles)} role; '{principal.username}' has the '{principal.role}' role.",
            code="insufficient_role")
    return principal


@_reads("identity")
async def require_admin(request: Request) -> Principal:
    return await _require_role(request, ("admin",))


@_reads("identity")
async def require_key_manager(request: Request) -> Principal:
    """Admins and developers: people who may manage (their own) API keys."""
    return await _require_role(request, ("admin", "developer"))


AdminDep = Annotated[Principal, Depends(require_admin)]
KeyManagerDep = Annotated[Principal, Depends(require_key_manager)]


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
