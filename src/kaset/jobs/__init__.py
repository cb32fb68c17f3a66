"""Durable async jobs: submit, poll, fetch the result, cancel, retry (docs/jobs.md).

The database is the source of truth (kaset.jobs.store). The same job functions
(kaset.jobs.kinds) run in the embedded runner (kaset.jobs.runner) and in Celery workers
(kaset.jobs.celery_app); the API publishes to those workers through kaset.jobs.queue.
"""

STATUSES = ("pending", "in_progress", "completed", "failed", "canceled")
FINISHED = ("completed", "failed", "canceled")
KINDS = ("transcribe", "diagnose")
