"""The distributed mode's API side: the Celery app settings and the queue that publishes job ids.

The message is only a job id; the database stays the source of truth. Settings that make a
job survive a worker's death:
- task_acks_late: a message is acknowledged after the task ran, so when a worker dies mid-job
  (SIGKILL, OOM, power) the broker delivers it again: RabbitMQ as soon as the worker's
  connection closes, Redis after its visibility timeout;
- task_reject_on_worker_lost: when a pool child process dies, its message is rejected with
  requeue instead of acknowledged;
- worker_prefetch_multiplier=1: a worker holds one message beyond the one it runs, never a
  batch another worker could have taken.

The worker side (`kaset jobs-worker`) is kaset.jobs.celery_app.
"""

from __future__ import annotations

import asyncio

from celery import Celery

from kaset.config import Settings

TASK_NAME = "kaset.jobs.run"


def make_celery(settings: Settings) -> Celery:
    app = Celery("kaset", broker=settings.jobs_broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.jobs_queue,
        task_ignore_result=True,  # results live in the jobs table
        broker_connection_retry_on_startup=True,
        # Redis redelivers an unacknowledged message after this long (AMQP on connection loss).
        broker_transport_options={"visibility_timeout": max(3600, int(settings.job_stale_s * 4))},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


class JobQueue:
    """The API side: publish a job id for a worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_celery(settings)

    async def enqueue(self, job_id: str) -> None:
        await asyncio.to_thread(self.app.send_task, TASK_NAME, args=[job_id], queue=self.settings.jobs_queue)

    def close(self) -> None:
        self.app.close()
