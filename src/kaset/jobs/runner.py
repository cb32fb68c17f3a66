"""Running jobs: the shared execute step, the embedded in-process runner, and the app's Jobs service."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from kaset.api.schemas.jobs import webhook_payload
from kaset.config import Settings
from kaset.jobs.kinds import JobContext, run_job
from kaset.jobs.store import JobRecord, JobStore
from kaset.jobs.webhooks import WebhookSender
from kaset.store.db import Database

if TYPE_CHECKING:
    from kaset.jobs.queue import JobQueue

log = logging.getLogger(__name__)


def worker_id(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def execute(store: JobStore, ctx: JobContext, job: JobRecord, webhooks: WebhookSender | None,
                  stale_s: float) -> bool:
    """Run a claimed job and write its outcome, fenced by its attempt. True if this attempt's
    outcome was stored; False if the job was canceled or taken back meanwhile (discarded)."""
    work = asyncio.create_task(run_job(ctx, job, store.folder(job.id)))
    lost = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(store, job, stale_s, work, lost))
    try:
        result, error = await work
    except asyncio.CancelledError:
        if not lost.is_set():
            raise  # the runner is stopping
        # Canceled (or taken back) while running: stop waiting for it. A model call already in a
        # thread finishes there, but its outcome goes nowhere.
        log.info("job %s attempt %d: canceled or taken back while running; stopped", job.id, job.attempt)
        return False
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
    written = await store.finish(job.id, job.attempt, result=result, error=error)
    if not written:
        log.info("job %s attempt %d: canceled or taken back meanwhile; its outcome is discarded", job.id, job.attempt)
        return False
    log.info("job %s attempt %d: stored (%s)", job.id, job.attempt, "failed" if error is not None else "completed")
    if job.webhook_url and webhooks is not None:
        done = await store.get(job.id)
        if done is not None:
            webhooks.send(job.webhook_url, webhook_payload(done))
    return True


async def _heartbeat(store: JobStore, job: JobRecord, stale_s: float, work: asyncio.Task[Any],
                     lost: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(max(stale_s / 4, 0.05))
        try:
            ours = await store.heartbeat(job.id, job.attempt)
        except Exception as exc:  # the database may be away for a moment; the next beat retries
            log.warning("job %s: heartbeat failed (%s)", job.id, exc)
            continue
        if not ours:
            lost.set()
            work.cancel()
            return


class JobRunner:
    """The embedded mode: claims pending jobs from the database and runs them in this process.

    Several runners (gateway replicas on one PostgreSQL) may run side by side: the claim is atomic.
    Jobs left in progress by a runner that stopped reporting (its process died) go back to pending.
    """

    def __init__(self, store: JobStore, ctx: JobContext, *, concurrency: int = 1, poll_s: float = 1.0,
                 stale_s: float = 60.0, webhooks: WebhookSender | None = None) -> None:
        self.store = store
        self.ctx = ctx
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.webhooks = webhooks
        self.worker = worker_id("embedded")
        self.running: dict[str, tuple[JobRecord, asyncio.Task[bool]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kaset-job-runner")

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            try:
                if loop.time() >= next_sweep:
                    resumed = await self.store.requeue_stale(self.stale_s)
                    if resumed:
                        log.info("resumed %d job(s) left in progress by a runner that stopped: %s", len(resumed),
                                 ", ".join(resumed))
                    next_sweep = loop.time() + max(self.stale_s / 2, self.poll_s)
                await self._claim_some()
            except Exception as exc:
                log.warning("job runner: %s; trying again in %.1f s", exc, self.poll_s)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _claim_some(self) -> None:
        free = self.concurrency - len(self.running)
        if free <= 0:
            return
        for job_id in await self.store.pending_ids(free * 2):
            job = await self.store.claim(job_id, self.worker)
            if job is None:
                continue  # another runner took it
            task = asyncio.create_task(execute(self.store, self.ctx, job, self.webhooks, self.stale_s))
            self.running[job.id] = (job, task)
            task.add_done_callback(functools.partial(self._done, job.id))
            free -= 1
            if free <= 0:
                return

    def _done(self, job_id: str, _task: object = None) -> None:
        entry = self.running.pop(job_id, None)
        if entry is not None and not entry[1].cancelled() and entry[1].exception() is not None:
            log.error("job %s: could not store its outcome (%s); it resumes when it looks stale", job_id,
                      entry[1].exception())
        self._wake.set()  # room for another job

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        running = list(self.running.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        # Shutting down mid-job: hand the jobs back at once, for the next start (or another replica).
        for job, _ in running:
            with contextlib.suppress(Exception):
                if await self.store.release(job.id, job.attempt):
                    log.info("job %s handed back (pending) at shutdown", job.id)


class Jobs:
    """The app's jobs service: the store, and who runs what is submitted (runner or queue)."""

    def __init__(self, store: JobStore, settings: Settings, runner: JobRunner | None = None,
                 queue: JobQueue | None = None) -> None:
        self.store = store
        self.settings = settings
        self.runner = runner
        self.queue = queue
        self._cleanup: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "celery" if self.queue is not None else "embedded"

    async def submitted(self, job_id: str) -> None:
        """A job became pending (new or retried): wake the runner, or enqueue it for a worker."""
        if self.queue is not None:
            await self.queue.enqueue(job_id)
        elif self.runner is not None:
            self.runner.wake()

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()
        self._cleanup = asyncio.create_task(self._cleanup_loop(), name="kaset-job-cleanup")

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                deleted = await self.store.delete_expired()
                if deleted:
                    log.info("deleted %d expired job(s)", len(deleted))
            except Exception as exc:
                log.warning("job cleanup: %s", exc)
            await asyncio.sleep(self.settings.job_cleanup_interval_s)

    async def stop(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
        if self.runner is not None:
            await self.runner.stop()
            if self.runner.webhooks is not None:
                await self.runner.webhooks.close()
        if self.queue is not None:
            self.queue.close()


def start_jobs(settings: Settings, db: Database, ctx: JobContext) -> Jobs:
    """Jobs for an app: Celery's queue when a broker is set, else the embedded runner (unless off)."""
    store = JobStore(db, settings.data_dir, settings.job_result_ttl_s)
    if settings.jobs_broker_url:
        from kaset.jobs.queue import JobQueue

        jobs = Jobs(store, settings, queue=JobQueue(settings))
    else:
        runner = None
        if settings.jobs_runner:
            runner = JobRunner(store, ctx, concurrency=settings.job_concurrency, poll_s=settings.job_poll_interval_s,
                               stale_s=settings.job_stale_s,
                               webhooks=WebhookSender(settings.job_webhook_attempts, settings.job_webhook_timeout_s))
        jobs = Jobs(store, settings, runner=runner)
    jobs.start()
    return jobs
