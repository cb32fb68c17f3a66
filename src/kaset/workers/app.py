"""The worker role: the same model routes as the gateway, serving only the models it was given.

A worker trusts the gateway: no users, keys, limits or request log here (the gateway does all
that), so it builds no database, identity or quota enforcer; a route that needed one would stop
the worker at start-up (`kaset.api.deps.require_state`). When `KASET_WORKER_TOKEN` is set every
model route wants it as a Bearer token; probes and /metrics stay open.
`MAX_CONCURRENT_INFERENCES` overrides each model's catalog `max_concurrent`. On SIGTERM the
worker drains: readiness answers 503 at once, new calls get 503 with Retry-After, calls in
flight finish (up to `KASET_WORKER_DRAIN_S`), then it stops.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaset import __version__
from kaset.api.deps import ModelsDep, SettingsDep, provide_state
from kaset.api.errors import install_error_handlers
from kaset.api.middleware import GatewayMiddleware
from kaset.api.policy import policy
from kaset.api.routers import (
    audio,
    chat,
    embeddings,
    health,
    inference_v2,
    metrics,
    models,
    translate,
)
from kaset.api.telemetry import Telemetry
from kaset.config import Settings
from kaset.errors import AuthenticationFailed, KasetError
from kaset.metrics import Metrics
from kaset.pipelines.graph import build_manager, build_model_services
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.store.spoken_replies import spoken_replies
from kaset.tracing import WORKER_SERVICE, install_tracing, shutdown_tracing
from kaset.usage import current_usage
from kaset.workers import tasks

log = logging.getLogger("kaset.worker")

# The model routes a worker serves; a gateway forwards only these (kaset.workers.pool).
WORKER_ROUTERS = (chat.router, embeddings.router, audio.router, models.router, translate.router,
                  inference_v2.router)

# Paths a draining worker still answers normally (probes, scrapes); /health/ready says 503.
_OPEN_PATHS = frozenset({"/health/live", "/v2/health/live", "/metrics"})
_READY_PATHS = frozenset({"/health/ready", "/v2/health/ready"})


def max_concurrent_override() -> int | None:
    """MAX_CONCURRENT_INFERENCES (as in the seeds): calls each model runs at once, if set."""
    value = os.environ.get("MAX_CONCURRENT_INFERENCES", "").strip()
    if not value:
        return None
    number = int(value)
    if number < 1:
        raise ValueError("MAX_CONCURRENT_INFERENCES must be at least 1")
    return number


@dataclass
class DrainState:
    draining: bool = False
    in_flight: int = 0
    # Set when the last call in flight of a draining worker is done.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Called (from the signal handler) when the drain starts: the Redis announcer says unready at once.
    on_drain: Callable[[], None] | None = None


class DrainMiddleware:
    """Counts calls in flight; while draining refuses new ones with 503 and Retry-After."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            ready_probe = scope["path"] in _READY_PATHS
            body = {"status": "draining"} if ready_probe else {"error": {
                "message": "This worker is shutting down; retry on another replica.", "type": "server_error",
                "param": None, "code": "worker_draining"}}
            await JSONResponse(body, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1
            if self.state.draining and self.state.in_flight == 0:
                self.state.idle.set()


USAGE_HEADER = "x-kaset-usage"


SSE_USAGE_PREFIX = b": x-kaset-usage "


def _usage_json() -> bytes | None:
    usage = current_usage.get()
    if usage is None:
        return None
    return json.dumps({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "audio_seconds": usage.audio_seconds, "images": usage.images,
                       "characters": usage.characters}, separators=(",", ":")).encode()


class UsageHeaderMiddleware:
    """Tells the gateway what a call consumed (tokens, audio seconds, ...), so the gateway's
    limits, budgets and request log count forwarded calls as its own: in an `x-kaset-usage`
    response header, or for an SSE stream (whose units are known only at its end) in a last SSE
    comment line `: x-kaset-usage {...}`, which the gateway strips. A streamed audio reply carries
    what was known when it started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sse = False

        async def send_usage(message: Message) -> None:
            nonlocal sse
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
                value = None if sse else _usage_json()
                if value is not None:
                    message["headers"] = [*headers, (USAGE_HEADER.encode(), value)]
            elif sse and message["type"] == "http.response.body" and not message.get("more_body", False):
                value = _usage_json()
                if value is not None:
                    await send({"type": "http.response.body", "body": SSE_USAGE_PREFIX + value + b"\n\n",
                                "more_body": True})
            await send(message)

        await self.app(scope, receive, send_usage)


def _token_guard(token: str | None):  # type: ignore[no-untyped-def]
    expected = f"Bearer {token}".encode() if token else None

    async def worker_auth(request: Request) -> None:
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise AuthenticationFailed("This worker takes calls from its gateway only (worker token missing or "
                                       "wrong).", code="invalid_worker_token")

    return worker_auth


async def _load_all(manager: ModelManager, names: list[str]) -> None:
    for name in names:
        try:
            await manager.load(name, reason="startup")
        except KasetError as exc:
            log.error("could not load %s: %s", name, exc.message)


def create_worker_app(settings: Settings, model_names: list[str]) -> FastAPI:
    """A worker serving `model_names` (ids, aliases or id@version)."""
    drain = DrainState()
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    concurrency = max_concurrent_override()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = Catalog.load(settings.catalog_dirs)
        names = [catalog.name_of(catalog.resolve(n)) for n in model_names]
        if concurrency is not None:
            for name in names:
                catalog.resolve(name).max_concurrent = concurrency
        # Settings are frozen: a worker serves its models only, read from this copy.
        serving = settings.model_copy(update={"models": names, "lazy_load": False})
        manager = build_manager(serving, catalog, observer=telemetry.metrics)
        model_side = build_model_services(serving, manager)
        telemetry.metrics.router = model_side.router
        telemetry.metrics.models = manager
        replies = spoken_replies(serving)
        loader: asyncio.Task[None] | None = None
        announcer = None
        try:
            # What the worker's routes use: the model routes, /warmup and the probes. No
            # identity, quotas or database (a route asking for one fails here, at start-up).
            provide_state(app, settings=serving, models=manager, router=model_side.router, speech=model_side.speech,
                          spoken_replies=replies, describer=model_side.describer)
            loader = asyncio.create_task(_load_all(manager, names))
            if serving.worker_registry == "redis":
                from kaset.workers.registry import RedisAnnouncer

                announcer = RedisAnnouncer(serving, names, lambda: health.readiness(serving, manager)[0]
                                           and not drain.draining)
                announcer.start()
                drain.on_drain = announcer.announce_soon
            yield
        finally:
            if loader is not None:
                loader.cancel()
            if announcer is not None:
                await announcer.close()
            await manager.close()
            await replies.close()
            await shutdown_tracing(app)

    app = FastAPI(title="Kaset worker", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    telemetry = Telemetry(Metrics())
    app.state.metrics = telemetry.metrics
    app.state.drain = drain
    app.add_middleware(UsageHeaderMiddleware)  # inside GatewayMiddleware: it sees the request's usage
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_upload_bytes + 1024 * 1024,
                       telemetry=telemetry)
    app.add_middleware(DrainMiddleware, state=drain)
    install_tracing(app, WORKER_SERVICE)  # outermost; nothing when tracing is off (docs/tracing.md)
    guard = [Depends(_token_guard(token))]
    for router in WORKER_ROUTERS:
        app.include_router(router, dependencies=guard)
    # The gateway's model handles call the worker's models here (kaset.workers.remote).
    app.include_router(tasks.router, dependencies=guard)
    app.include_router(health.router)
    app.include_router(metrics.router)

    @app.post("/warmup", dependencies=guard)
    @policy()
    async def warmup(served: SettingsDep, models: ModelsDep) -> JSONResponse:
        """Run each model's warmup now (load it first if needed); 200 with the time each took."""
        timings: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        for name in served.models or []:
            loaded = await models.load(name, reason="warmup")
            started = loop.time()
            await loaded.run(loaded.runtime.warmup)
            timings[name] = round(loop.time() - started, 4)
        return JSONResponse({"warmed": timings})

    return app


class WorkerServer(uvicorn.Server):
    """uvicorn, with SIGTERM meaning: drain (readiness 503, refuse new calls), then stop."""

    def __init__(self, config: uvicorn.Config, drain: DrainState, drain_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain.draining and not self.should_exit:
            self.drain.draining = True
            if self.drain.on_drain is not None:
                self.drain.on_drain()
            log.info("SIGTERM: draining (%d call(s) in flight, at most %g s)", self.drain.in_flight, self.drain_s)
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if self.drain.in_flight > 0:
            try:
                await asyncio.wait_for(self.drain.idle.wait(), self.drain_s)
            except TimeoutError:
                log.warning("drain: %d call(s) still in flight after %g s; stopping anyway",
                            self.drain.in_flight, self.drain_s)
        # A beat for the gateway's readiness poll to see 503 before the port closes.
        await asyncio.sleep(0.2)
        self.should_exit = True


def run_worker(settings: Settings, model_names: list[str]) -> None:
    app = create_worker_app(settings, model_names)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            loop="uvloop", http="httptools", access_log=False)
    server = WorkerServer(config, app.state.drain, settings.worker_drain_s)
    server.run()

