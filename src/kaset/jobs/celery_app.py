"""The distributed mode's worker side: `kaset jobs-worker` runs the jobs Celery carries from the API.

The message is only a job id; the database stays the source of truth. The settings that make a
job survive a worker's death, and the queue the API publishes to, are in kaset.jobs.queue.
A redelivered message may meet a job its first worker still runs (network split): the claim
bumps the attempt, and only the attempt that claimed last can write the result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from kaset.config import Settings
from kaset.jobs.kinds import JobContext
from kaset.jobs.queue import TASK_NAME, make_celery
from kaset.jobs.runner import execute, worker_id
from kaset.jobs.store import JobStore
from kaset.jobs.webhooks import WebhookSender

if TYPE_CHECKING:
    from kaset.registry.catalog import Catalog
    from kaset.registry.handle import RemoteModels

log = logging.getLogger(__name__)

# Opens the models kaset workers serve, for this process's router, and gives back how to close
# them (kaset.cli passes kaset.workers.remote.open_worker_models: that package sits above this one).
RemoteOpener = Callable[[Settings, "Catalog"], Awaitable[tuple["RemoteModels", Callable[[], Awaitable[None]]]]]


class WorkerState:
    """One per worker process: its own event loop thread, database, models and services."""

    def __init__(self, settings: Settings, open_remote: RemoteOpener | None = None) -> None:
        self.settings = settings
        self.open_remote = open_remote
        self.close_remote: Callable[[], Awaitable[None]] | None = None
        self.worker = worker_id("celery")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kaset-jobs-loop", daemon=True)
        self._thread.start()
        self.run(self._open())

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    async def _open(self) -> None:
        from kaset.pipelines.graph import build_manager, build_model_services
        from kaset.store.db import Database

        settings = self.settings
        self.db = Database(settings.resolved_database_url)
        if self.db.is_sqlite:
            await self.db.upgrade()
        self.store = JobStore(self.db, settings.data_dir, settings.job_result_ttl_s)
        # Models load on a job's first use (lazy) and stay loaded for the next jobs.
        self.manager = build_manager(settings, lazy_load=True)
        for model_id in settings.models or []:
            await self.manager.load(model_id)
        remote = None
        if self.open_remote is not None:
            # Jobs then run on the workers' models too, with their breakers and failover.
            remote, self.close_remote = await self.open_remote(settings, self.manager.catalog)
        model_side = build_model_services(settings, self.manager, remote)
        self.ctx = JobContext(settings=settings, router=model_side.router, diagnoser=model_side.diagnoser)
        self.webhooks = WebhookSender(settings.job_webhook_attempts, settings.job_webhook_timeout_s)

    async def handle(self, job_id: str, redelivered: bool) -> str:
        """"done", "discarded", "skipped" (nothing to do) or "busy" (another worker looks alive on it)."""
        job = await self.store.claim(job_id, self.worker, stale_s=self.settings.job_stale_s, take_over=redelivered)
        if job is None:
            current = await self.store.get(job_id)
            if current is not None and current.status == "in_progress":
                return "busy"
            log.info("job %s: %s; nothing to do", job_id, "gone" if current is None else current.status)
            return "skipped"
        log.info("job %s (%s) attempt %d: running%s", job.id, job.kind, job.attempt,
                 " (redelivered)" if redelivered else "")
        written = await execute(self.store, self.ctx, job, self.webhooks, self.settings.job_stale_s)
        return "done" if written else "discarded"

    async def _close(self) -> None:
        await self.webhooks.close()
        if self.close_remote is not None:
            await self.close_remote()
        await self.manager.close()
        await self.db.close()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)


_state: WorkerState | None = None
_state_lock = threading.Lock()


def worker_app(settings: Settings) -> Celery:
    """The Celery app `kaset jobs-worker` runs: one task, which runs the job with the same code
    the embedded runner uses."""
    app = make_celery(settings)

    def state() -> WorkerState:
        global _state
        with _state_lock:
            if _state is None:
                _state = WorkerState(settings)
            return _state

    @app.task(name=TASK_NAME, bind=True, max_retries=None)
    def run(self: Task, job_id: str) -> str:
        delivery = self.request.delivery_info or {}
        outcome: str = state().run(state().handle(job_id, bool(delivery.get("redelivered"))))
        if outcome == "busy":
            # Its runner still reports: try again once it would look stale if it died.
            raise self.retry(countdown=settings.job_stale_s)
        return outcome

    return app


def run_worker(settings: Settings, *, concurrency_note: str = "solo", loglevel: str = "INFO",
               open_remote: RemoteOpener | None = None) -> None:
    """`kaset jobs-worker`: a Celery worker in this process (the solo pool: jobs run here, one at a
    time, with models loaded once; run more workers for more jobs at once)."""
    global _state
    app = worker_app(settings)
    _state = WorkerState(settings, open_remote)  # database and the --models loaded before taking work
    try:
        app.worker_main(["worker", f"--pool={concurrency_note}", f"--loglevel={loglevel}",
                         f"--queues={settings.jobs_queue}", f"--hostname=kaset-jobs@{_state.worker}",
                         "--without-gossip", "--without-mingle", "--without-heartbeat"])
    finally:
        _state.close()
