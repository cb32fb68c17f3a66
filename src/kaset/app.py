"""The gateway application: wiring of settings, database, keys and models into FastAPI."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from kaset import __version__
from kaset.api.deps import authenticate, provide_state
from kaset.api.errors import install_error_handlers
from kaset.api.middleware import GatewayMiddleware
from kaset.api.policy import PLAIN, apply_policy
from kaset.api.routers import (
    admin,
    advice,
    audio,
    auth,
    chat,
    crop_doctor,
    describe,
    diagnose,
    embeddings,
    health,
    inference_v2,
    listing,
    metrics,
    models,
    pipeline,
    repository,
    translate,
    usage,
    voice,
)
from kaset.api.routers import jobs as job_routes
from kaset.api.telemetry import Telemetry
from kaset.auth.identity import Identity
from kaset.config import Settings
from kaset.errors import KasetError
from kaset.jobs.kinds import JobContext
from kaset.jobs.runner import start_jobs
from kaset.metrics import Metrics
from kaset.pipelines.graph import build_manager, build_model_services
from kaset.quotas.enforcer import QuotaEnforcer
from kaset.registry.catalog import Catalog
from kaset.registry.lifecycle import start_idle_sweeper
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.store.db import Database
from kaset.store.spoken_replies import spoken_replies
from kaset.tracing import GATEWAY_SERVICE, install_tracing, shutdown_tracing
from kaset.ui import pages
from kaset.workers.pool import WorkerPool
from kaset.workers.remote import WorkerModels

log = logging.getLogger("kaset")

# Called with a newly created admin key, once, on the first start with an empty database.
KeyAnnouncer = Callable[[str], None]
# Called as each start-up model finishes loading: (model id, done, total, seconds).
LoadReporter = Callable[[str, int, int, float], None]


def _print_admin_key(key: str) -> None:
    print(
        "\n" + "=" * 72 + "\n"
        "  Kaset created the first admin API key. It is shown only this once:\n\n"
        f"    {key}\n\n"
        "  Use it as 'Authorization: Bearer <key>' (or OPENAI_API_KEY for OpenAI clients).\n"
        + "=" * 72 + "\n",
        flush=True,
    )


def startup_models(settings: Settings, catalog: Catalog, repository: ModelRepository) -> list[str]:
    """The models to load at start: the ones asked for, or the installed default pack."""
    if settings.models is not None:
        return [catalog.name_of(catalog.resolve(name)) for name in settings.models]
    return [catalog.name_of(s) for s in catalog if s.default and repository.is_installed(s)]


async def bootstrap_admin_key(identity: Identity, announce: KeyAnnouncer) -> None:
    """First start (no users, no keys): an 'admin' user and its key, announced once."""
    key = await identity.bootstrap_admin(os.environ.get("KASET_BOOTSTRAP_KEY") or None)
    if key is not None:
        announce(key)


async def _load_models(manager: ModelManager, model_ids: list[str], on_load: LoadReporter | None) -> None:
    for done, model_id in enumerate(model_ids, start=1):
        started = time.perf_counter()
        try:
            await manager.load(model_id, reason="startup")
        except KasetError as exc:
            log.error("could not load %s: %s", model_id, exc.message)
        if on_load is not None:
            on_load(model_id, done, len(model_ids), time.perf_counter() - started)


def quota_enforcer(settings: Settings, metrics: Metrics) -> QuotaEnforcer:
    return QuotaEnforcer(
        key_defaults=settings.default_key_limits.to_limits(), user_defaults=settings.default_user_limits.to_limits(),
        storage_url=settings.resolved_limits_storage_url, on_storage_error=settings.limits_on_storage_error,
        retry_s=settings.limits_storage_retry_s, lease_s=settings.limits_lease_s, headers=settings.limits_headers,
        metrics=metrics, redis_prefix=settings.redis_prefix)


def create_app(settings: Settings | None = None, announce_key: KeyAnnouncer = _print_admin_key,
               on_load: LoadReporter | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        # SQLite: migrated here. PostgreSQL: refuses an unmigrated schema; unreachable is
        # served anyway (False), with the request log buffering until it returns.
        try:
            db_reachable = await db.prepare_for_serving()
        except Exception:
            await db.close()
            raise
        identity = Identity.from_settings(settings, db)
        if db_reachable:
            await bootstrap_admin_key(identity, announce_key)
        # Revocation listener (Redis) and database poll: revoked keys fail within 1 s everywhere.
        identity.start()
        catalog = Catalog.load(settings.catalog_dirs)
        manager = build_manager(settings, catalog, observer=telemetry.metrics)
        # Settings are frozen: the models to load at start go in the copy every service below reads.
        serving = settings.model_copy(update={"models": startup_models(settings, catalog, manager.repository)})
        # Models served by worker processes (docs/workers.md), called through the router's handles.
        workers = None
        if serving.worker_urls or serving.worker_registry == "redis":
            workers = WorkerPool(serving, catalog, telemetry.metrics.registry)
            await workers.start()
        # Pipelines, voice and jobs reach the workers' models through the router's handles.
        model_side = build_model_services(serving, manager, WorkerModels(workers) if workers is not None else None)
        routing, diagnoser = model_side.router, model_side.diagnoser
        telemetry.metrics.router = routing
        quotas = quota_enforcer(serving, telemetry.metrics)
        replies = spoken_replies(serving)
        provide_state(app, settings=serving, models=manager, router=routing, speech=model_side.speech,
                      spoken_replies=replies, describer=model_side.describer, advisor=model_side.advisor,
                      diagnoser=diagnoser, identity=identity, quotas=quotas, db=db)
        telemetry.start(db, serving, manager)
        # Load in the background: /health/live answers at once, /health/ready once loaded.
        loader = asyncio.create_task(_load_models(manager, serving.models or [], on_load))
        voices = asyncio.create_task(model_side.speech.list_voices())
        # Unloads models idle past their TTL (none when no model has one).
        sweeper = start_idle_sweeper(manager)
        # Durable async jobs: the embedded runner, or Celery's queue when a broker is set.
        app.state.jobs = jobs = start_jobs(serving, db, JobContext(serving, routing, diagnoser))
        try:
            yield
        finally:
            await jobs.stop()  # first: running jobs are handed back before their models close
            loader.cancel()
            voices.cancel()
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
            await telemetry.stop()
            if workers is not None:
                await workers.close()
            await manager.close()
            await quotas.close()
            await replies.close()
            await identity.close()
            await db.close()
            await shutdown_tracing(app)

    app = FastAPI(
        title="Kaset",
        version=__version__,
        description="Self-hosted AI services: speech, text, translation and embeddings behind an "
        "OpenAI-compatible API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # One metrics registry per app: nothing global, so apps in one process never mix counts.
    telemetry = Telemetry(Metrics())
    app.state.metrics = telemetry.metrics
    app.state.telemetry = telemetry  # WebSocket routes log their sessions themselves
    # Multipart and JSON overhead on top of the largest accepted upload.
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_upload_bytes + 1024 * 1024,
                       telemetry=telemetry)
    # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/tracing.md): after the other
    # middleware, so its span covers them; off, nothing is added.
    install_tracing(app, GATEWAY_SERVICE)
    # Routes are matched in order, a few µs each: the busiest model routes go first, and
    # health probes and scrapes (cheap, answered without a key) after them.
    secured = [Depends(authenticate)]
    for router in (chat.router, embeddings.router, audio.router, models.router, translate.router, advice.router,
                   diagnose.router, describe.router, inference_v2.router, usage.router, voice.router,
                   crop_doctor.router, listing.router, pipeline.router):
        app.include_router(router, dependencies=secured)
    app.include_router(job_routes.router, dependencies=secured)
    # WebSockets authenticate themselves (a browser cannot send an Authorization header).
    app.include_router(voice.sockets)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # After the model routes: routes are matched in order at a few µs each, and these are rare.
    # Sign-in is open; the admin and own-key routers check roles themselves (require_admin, ...).
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(admin.own_keys)
    app.include_router(repository.router)
    # The web app's page (kaset.ui imports nothing of Kaset): a plain, logged route.
    apply_policy(pages.router, PLAIN)
    pages.mount(app)
    return app
