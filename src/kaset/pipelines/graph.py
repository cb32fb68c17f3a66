"""The model side of a Kaset process, built one way for the gateway (kaset.app), a model worker
(kaset.workers.app) and a Celery jobs worker (kaset.jobs.celery_app): the model manager, the
router over it (and over workers' models, when `remote` is given) and the pipelines on top.

Each process adds only what it needs around it: the gateway its database, identity, limits
and jobs; a model worker nothing (it keeps no users, keys or logs); a jobs worker its job store.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaset.config import Settings
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.describe import DescribeService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import SpeechService
from kaset.registry.catalog import Catalog
from kaset.registry.handle import RemoteModels
from kaset.registry.lifecycle import LifecycleObserver, LifecyclePolicy
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.registry.routing import Router


@dataclass(frozen=True)
class ModelServices:
    manager: ModelManager
    # Serves model names: routes (A/B, fallbacks, retries), breakers, local and remote handles.
    router: Router
    advisor: AdviceService
    diagnoser: DiagnosisService
    describer: DescribeService
    # Hearing and speaking for pipelines (voice assistant, chat with audio, crop doctor, ULCA).
    speech: SpeechService


def build_manager(settings: Settings, catalog: Catalog | None = None, *, lazy_load: bool | None = None,
                  observer: LifecycleObserver | None = None) -> ModelManager:
    """The process's model manager over the catalog and the models folder of `settings`."""
    return ModelManager(catalog or Catalog.load(settings.catalog_dirs), ModelRepository(settings.resolved_models_dir),
                        lazy_load=settings.lazy_load if lazy_load is None else lazy_load, warmup=settings.warmup,
                        policy=LifecyclePolicy.from_settings(settings), observer=observer)


def build_model_services(settings: Settings, manager: ModelManager,
                         remote: RemoteModels | None = None) -> ModelServices:
    """The router and pipelines over `manager` (and `remote`: models served by kaset workers)."""
    router = Router(manager, breaker_failures=settings.breaker_failures, breaker_cooldown_s=settings.breaker_cooldown_s,
                    retry_backoff_s=settings.retry_backoff_s, retry_max_wait_s=settings.retry_max_wait_s)
    router.remote = remote
    advisor = AdviceService(router)
    return ModelServices(
        manager=manager, router=router, advisor=advisor,
        diagnoser=DiagnosisService(router, advisor.entries),
        describer=DescribeService(router, vision_models=settings.describe_models),
        speech=SpeechService(router, manager, settings.max_audio_seconds),
    )
