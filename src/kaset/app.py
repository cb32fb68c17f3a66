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
from kaset.api.deps import Services, authenticate
from kaset.api.errors import install_error_handlers
from kaset.api.middleware import GatewayMiddleware
from kaset.api.routers import advice, audio, chat, diagnose, embeddings, health, inference_v2, models, translate
from kaset.auth.keys import KeyStore
from kaset.config import Settings
from kaset.errors import KasetError
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.store.db import Database

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


async def bootstrap_admin_key(keys: KeyStore, announce: KeyAnnouncer) -> None:
    if await keys.count() > 0:
        return
    preset = os.environ.get("KASET_BOOTSTRAP_KEY")
    key, _ = await keys.create(name="admin (first start)", role="admin", key=preset or None)
    if not preset:
        announce(key)


async def _load_models(manager: ModelManager, model_ids: list[str], on_load: LoadReporter | None) -> None:
    for done, model_id in enumerate(model_ids, start=1):
        started = time.perf_counter()
        try:
            await manager.load(model_id)
        except KasetError as exc:
            log.error("could not load %s: %s", model_id, exc.message)
        if on_load is not None:
            on_load(model_id, done, len(model_ids), time.perf_counter() - started)


def create_app(settings: Settings | None = None, announce_key: KeyAnnouncer = _print_admin_key,
               on_load: LoadReporter | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        await db.upgrade()
        keys = KeyStore(db, cache_ttl_s=settings.key_cache_ttl_s)
        await bootstrap_admin_key(keys, announce_key)
        catalog = Catalog.load(settings.catalog_dirs)
        manager = ModelManager(catalog, ModelRepository(settings.resolved_models_dir),
                               lazy_load=settings.lazy_load, warmup=settings.warmup)
        settings.models = startup_models(settings, catalog, manager.repository)
        advisor = AdviceService(manager)
        diagnoser = DiagnosisService(manager, advisor.entries)
        app.state.services = Services(settings=settings, db=db, keys=keys, models=manager, advisor=advisor,
                                      diagnoser=diagnoser)
        # Load in the background: /health/live answers at once, /health/ready once loaded.
        loader = asyncio.create_task(_load_models(manager, settings.models, on_load))
        try:
            yield
        finally:
            loader.cancel()
            await manager.close()
            await db.close()

    app = FastAPI(
        title="Kaset",
        version=__version__,
        description="Self-hosted AI services: speech, text, translation and embeddings behind an "
        "OpenAI-compatible API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Multipart and JSON overhead on top of the largest accepted upload.
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_upload_bytes + 1024 * 1024)
    app.include_router(health.router)
    secured = [Depends(authenticate)]
    for router in (models.router, chat.router, embeddings.router, audio.router, translate.router, advice.router,
                   diagnose.router, inference_v2.router):
        app.include_router(router, dependencies=secured)
    return app
