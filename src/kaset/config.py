"""Settings, from environment variables (`KASET_*`), an optional YAML file, and defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kaset.quotas.policy import LimitsModel


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("kaset", appauthor=False))


class Settings(BaseSettings):
    """Read once at start and never changed after (frozen: assigning a field raises). A process
    that serves with other values serves a copy, `settings.model_copy(update={...})`, made
    before its services are built, so every part of it reads the same settings."""

    model_config = SettingsConfigDict(env_prefix="KASET_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=default_data_dir)
    # Defaults to SQLite under data_dir; PostgreSQL via postgresql+asyncpg://...
    database_url: str | None = None
    # Where installed models live: <models_dir>/<id>/<version>/ plus a model card.
    models_dir: Path | None = None
    catalog_dirs: list[Path] = Field(default_factory=list)

    # Models to load at start. None: every installed model of the catalog's default pack.
    models: list[str] | None = None
    # Load a model on its first request if it is installed but not loaded.
    lazy_load: bool = True
    warmup: bool = True

    # Model lifecycle (kaset.registry.lifecycle; catalog entries override per model with
    # idle_unload_s, max_queue and pinned). Unload a model after this many seconds without a
    # call; 0 or unset: never.
    model_idle_unload_s: float | None = Field(default=None, ge=0)
    # Memory all loaded models may take together (MB). Loading past it first unloads the least
    # recently used idle unpinned models, else is refused with 503. 0 or unset: no budget.
    model_memory_budget_mb: float | None = Field(default=None, ge=0)
    # Models never unloaded for idleness or room (ids, aliases or id@version; from the
    # environment a comma-separated list or a JSON list).
    pinned_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Calls that may wait for a busy model beyond the ones it runs, for models whose catalog
    # entry sets no max_queue; more get 429 with Retry-After. Unset: 32 per max_concurrent.
    model_max_queue: int | None = Field(default=None, ge=0)

    auth_enabled: bool = True
    key_cache_ttl_s: float = 300.0
    # Shared state for several gateway replicas (verified-key cache, revocation pub/sub), e.g.
    # redis://127.0.0.1:6379/0. None: everything stays in process (the embedded mode).
    redis_url: str | None = None
    # Namespace of every Redis key and channel Kaset uses: deployments sharing one Redis (or
    # tests) keep apart by giving each its own.
    redis_prefix: str = "kaset:"
    # HS256 signing secret for sign-in tokens (>= 32 bytes). None: generated once into
    # <data_dir>/jwt_secret (0600). Replicas must share one: set it for a distributed deployment.
    jwt_secret: SecretStr | None = None
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 7 * 24 * 3600
    # How often a server checks the database for revoked keys and changed users (the path that
    # makes `kaset keys revoke` take effect without Redis, and the backstop when Redis is down).
    auth_poll_interval_s: float = 0.5

    # Per-key and per-user limits (kaset.quotas). Defaults apply to keys and users whose own
    # `limits` are not set; each is JSON, e.g. '{"requests_per_minute": 600, "tokens_per_day": 200000}'.
    # Unset: no limits beyond a key's or user's own.
    default_key_limits: LimitsModel = Field(default_factory=LimitsModel)
    default_user_limits: LimitsModel = Field(default_factory=LimitsModel)
    # Where counters live: "memory://" (one process), or a Redis URL so replicas share budgets.
    # None: redis_url when set, else memory.
    limits_storage_url: str | None = None
    # When that Redis is unreachable: "local" keeps enforcing every limit per replica from memory
    # (logged, flagged by the x-kaset-limits: local header and a metric) and tries Redis again
    # every limits_storage_retry_s; "reject" answers 503 instead. Never unlimited.
    limits_on_storage_error: Literal["local", "reject"] = "local"
    limits_storage_retry_s: float = 5.0
    # x-ratelimit-limit/remaining/reset on successful responses too (one more storage read each).
    limits_headers: bool = True
    # A concurrency slot whose gateway died mid-request is freed after this long.
    limits_lease_s: float = 600.0

    # Input limits: beyond them a request gets 413/400 before any model sees it.
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 30 * 60
    max_speech_chars: int = 4096
    max_text_chars: int = 100_000
    max_translate_texts: int = 128
    max_embedding_inputs: int = 2048
    # Photos above this are refused (413); big but allowed ones are scaled down on decode.
    max_image_pixels: int = 60_000_000

    # Vision-capable provider models (catalog ids, `vision: true`) that /v1/describe-image and
    # chat image parts try first, in order, before the offline label-based description.
    # From the environment: a comma-separated list or a JSON list.
    describe_models: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Routing (kaset.registry.routing; routes themselves are declared in catalog files). An
    # upstream (a provider's base_url, else a model) that fails this many times in a row has
    # its breaker opened: calls to it fail fast (routes move on to their fallbacks) for
    # breaker_cooldown_s, then one trial call decides. 0 turns breakers off. Per process.
    breaker_failures: int = Field(default=5, ge=0)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    # A route's retries wait about retry_backoff_s * 2^n (full jitter), at most retry_max_wait_s;
    # an upstream's Retry-After longer than retry_max_wait_s moves on to the next fallback instead.
    retry_backoff_s: float = Field(default=0.2, ge=0)
    retry_max_wait_s: float = Field(default=5.0, ge=0)

    # Request log (kaset.store.request_log): rows are buffered in memory and written in batches
    # of up to flush_rows every flush_ms. While the database is unreachable at most
    # buffer_rows rows wait (about 300 bytes each); beyond that the oldest are dropped and counted.
    request_log: bool = True
    request_log_buffer_rows: int = 100_000
    request_log_flush_rows: int = 1000
    request_log_flush_ms: int = 1000
    # Raw request-log rows older than this are deleted (hourly, in small batches); daily
    # rollups are kept. 0 keeps raw rows forever.
    log_retention_days: int = 30

    # Durable async jobs (kaset.jobs, docs/jobs.md). Without a broker an in-process runner runs
    # them (the embedded mode); with KASET_JOBS_BROKER_URL (amqp://... or redis://...) the API
    # enqueues them for `kaset jobs-worker` processes (Celery). The database is the source of truth.
    jobs_broker_url: str | None = None
    jobs_queue: str = "kaset-jobs"
    # Run the embedded runner in this process (no broker set). Off: jobs wait for a runner elsewhere.
    jobs_runner: bool = True
    # Jobs one embedded runner runs at once.
    job_concurrency: int = Field(default=1, ge=1)
    job_poll_interval_s: float = Field(default=1.0, gt=0)
    # A job in progress whose runner has not reported for this long is taken back (its runner died).
    job_stale_s: float = Field(default=60.0, gt=0)
    # Finished jobs (result, error, files) are kept this long, then deleted.
    job_result_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    job_cleanup_interval_s: float = Field(default=300.0, gt=0)
    job_max_images: int = Field(default=64, ge=1)
    # Webhook deliveries: attempts (with backoff) and the timeout of each.
    job_webhook_attempts: int = Field(default=3, ge=1)
    job_webhook_timeout_s: float = Field(default=10.0, gt=0)

    # Workers (kaset.workers, docs/workers.md). Gateway side: models served by worker processes
    # (`kaset worker`) found at these base URLs (comma-separated or a JSON list) or announced in
    # Redis (worker_registry "redis", using redis_url and redis_prefix); requests naming those
    # models are forwarded to the least busy ready replica.
    worker_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    worker_registry: Literal["static", "redis"] = "static"
    # Shared secret between gateway and workers (Bearer). Set: a worker refuses calls without it.
    worker_token: SecretStr | None = None
    # A forwarded call with no reply byte for this long fails with 504.
    worker_timeout_s: float = Field(default=120.0, gt=0)
    # How often the gateway polls each worker's /health/ready (static discovery).
    worker_poll_interval_s: float = Field(default=1.0, gt=0)
    # Worker side: the URL announced in Redis (default http://<host>:<port>), heartbeat and TTL.
    worker_advertise_url: str | None = None
    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    worker_ttl_s: float = Field(default=6.0, gt=0)
    # Gateway side: while Redis is unreachable, the last known workers are kept this long.
    worker_registry_grace_s: float = Field(default=30.0, ge=0)
    # Worker side: on SIGTERM, how long in-flight calls may take before the worker stops anyway.
    worker_drain_s: float = Field(default=30.0, gt=0)

    log_level: str = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("describe_models", "pinned_models", "worker_urls", mode="before")
    @classmethod
    def _split_describe_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @property
    def resolved_limits_storage_url(self) -> str:
        return self.limits_storage_url or self.redis_url or "memory://"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'kaset.db'}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (if given), overridden by env vars, then by explicit overrides."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        if not isinstance(file_values, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
    env_settings = Settings()
    merged = {**file_values, **env_settings.model_dump(exclude_unset=True)}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**merged)
