"""The `jobs` table: submit, atomic claim, heartbeats, fenced completion, cancel, retry, cleanup.

Every state change is one conditional UPDATE, so it is atomic on SQLite and PostgreSQL alike:
- claim: `status='pending'` (or an in-progress job whose runner stopped reporting) → in_progress,
  `attempt + 1`; two runners never both get rowcount 1.
- finish: `status='in_progress' AND attempt=n`: a job canceled meanwhile, or taken back from a
  runner that looked dead and claimed again (attempt n+1), is never written by attempt n. That
  is what makes a result exactly-once when a Celery message is delivered twice.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, and_, delete, or_, select, update

from kaset.auth.principal import utc
from kaset.store.db import Database
from kaset.store.tables import Job


def now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    kind: str
    status: str
    owner_user_id: int | None
    owner_key_id: int | None
    params: dict[str, Any]
    webhook_url: str | None
    result: Any
    error: dict[str, Any] | None
    attempt: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def of(cls, row: Job) -> JobRecord:
        return cls(id=row.id, kind=row.kind, status=row.status, owner_user_id=row.owner_user_id,
                   owner_key_id=row.owner_key_id, params=dict(row.params or {}), webhook_url=row.webhook_url,
                   result=row.result, error=row.error, attempt=row.attempt, worker=row.worker,
                   created_at=utc(row.created_at) or now(), started_at=utc(row.started_at),
                   finished_at=utc(row.finished_at), expires_at=utc(row.expires_at))

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= now()


def _count(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


class JobStore:
    def __init__(self, db: Database, data_dir: Path, result_ttl_s: float) -> None:
        self.db = db
        self.root = data_dir / "jobs"
        self.result_ttl = timedelta(seconds=result_ttl_s)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    async def create(self, job_id: str, kind: str, params: dict[str, Any], *, owner_user_id: int | None,
                     owner_key_id: int | None, webhook_url: str | None) -> JobRecord:
        row = Job(id=job_id, kind=kind, status="pending", owner_user_id=owner_user_id, owner_key_id=owner_key_id,
                  params=params, webhook_url=webhook_url, attempt=0, created_at=now())
        async with self.db.sessions() as session, session.begin():
            session.add(row)
        return JobRecord.of(row)

    async def get(self, job_id: str) -> JobRecord | None:
        async with self.db.sessions() as session:
            row = await session.get(Job, job_id)
            return JobRecord.of(row) if row is not None else None

    async def list_jobs(self, owner_user_id: int | None, *, everyone: bool, status: str | None = None,
                   limit: int = 100) -> list[JobRecord]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if not everyone:
            query = query.where(Job.owner_user_id.is_(None) if owner_user_id is None
                                else Job.owner_user_id == owner_user_id)
        if status is not None:
            query = query.where(Job.status == status)
        async with self.db.sessions() as session:
            return [JobRecord.of(row) for row in (await session.scalars(query)).all()]

    async def pending_ids(self, limit: int) -> list[str]:
        query = select(Job.id).where(Job.status == "pending").order_by(Job.created_at, Job.id).limit(limit)
        async with self.db.sessions() as session:
            return list((await session.scalars(query)).all())

    async def claim(self, job_id: str, worker: str, *, stale_s: float | None = None,
                    take_over: bool = False) -> JobRecord | None:
        """Take a job to run: the claimed job (attempt bumped), or None if another runner has it.

        Pending jobs are always claimable. An in-progress one only with `take_over` (its Celery
        message was redelivered: the broker saw its worker go) or when its runner has not
        reported for `stale_s` seconds.
        """
        t = now()
        taken: list[Any] = [Job.status == "pending"]
        if take_over:
            taken.append(Job.status == "in_progress")
        elif stale_s is not None:
            taken.append(and_(Job.status == "in_progress", Job.heartbeat_at < t - timedelta(seconds=stale_s)))
        async with self.db.sessions() as session, session.begin():
            result = await session.execute(
                update(Job).where(Job.id == job_id, or_(*taken))
                .values(status="in_progress", attempt=Job.attempt + 1, worker=worker[:200], heartbeat_at=t,
                        started_at=t, result=None, error=None).execution_options(synchronize_session=False))
            if _count(result) != 1:
                return None
            row = await session.get(Job, job_id, populate_existing=True)
            return JobRecord.of(row) if row is not None else None

    async def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Say attempt `attempt` of a job is still running: False if the job is no longer its own
        (canceled, or taken back), so the runner can stop waiting for it."""
        async with self.db.sessions() as session, session.begin():
            done = await session.execute(update(Job).where(Job.id == job_id, Job.status == "in_progress",
                                                           Job.attempt == attempt).values(heartbeat_at=now()))
            return _count(done) == 1

    async def finish(self, job_id: str, attempt: int, *, result: Any = None,
                     error: dict[str, Any] | None = None) -> bool:
        """Write the outcome of attempt `attempt`: True if written, False if the job was canceled or
        taken back meanwhile (the outcome is then discarded)."""
        t = now()
        async with self.db.sessions() as session, session.begin():
            done = await session.execute(
                update(Job).where(Job.id == job_id, Job.status == "in_progress", Job.attempt == attempt)
                .values(status="failed" if error is not None else "completed", result=result, error=error,
                        finished_at=t, expires_at=t + self.result_ttl, heartbeat_at=None))
            return _count(done) == 1

    async def release(self, job_id: str, attempt: int) -> bool:
        """Put a job this runner is giving up (shutting down) back to pending, for another runner."""
        async with self.db.sessions() as session, session.begin():
            done = await session.execute(
                update(Job).where(Job.id == job_id, Job.status == "in_progress", Job.attempt == attempt)
                .values(status="pending", worker=None, heartbeat_at=None))
            return _count(done) == 1

    async def requeue_stale(self, stale_s: float) -> list[str]:
        """Jobs left in progress by a runner that stopped reporting (a dead process) → pending again."""
        cutoff = now() - timedelta(seconds=stale_s)
        stale = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
        async with self.db.sessions() as session, session.begin():
            ids = list((await session.scalars(select(Job.id).where(Job.status == "in_progress", stale))).all())
            if ids:
                await session.execute(update(Job).where(Job.id.in_(ids), Job.status == "in_progress", stale)
                                      .values(status="pending", worker=None, heartbeat_at=None))
            return ids

    async def cancel(self, job_id: str) -> bool:
        """pending or in_progress → canceled (a running job's outcome is discarded when it ends)."""
        t = now()
        async with self.db.sessions() as session, session.begin():
            done = await session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_(("pending", "in_progress")))
                .values(status="canceled", finished_at=t, expires_at=t + self.result_ttl, heartbeat_at=None))
            return _count(done) == 1

    async def retry(self, job_id: str) -> bool:
        """failed or canceled → pending again (its input files are still there until it expires)."""
        async with self.db.sessions() as session, session.begin():
            done = await session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_(("failed", "canceled")))
                .values(status="pending", result=None, error=None, finished_at=None, expires_at=None,
                        worker=None, heartbeat_at=None))
            return _count(done) == 1

    async def fail(self, job_id: str, error: dict[str, Any]) -> None:
        """Fail a job that never ran (e.g. it could not be enqueued)."""
        t = now()
        async with self.db.sessions() as session, session.begin():
            await session.execute(update(Job).where(Job.id == job_id, Job.status == "pending")
                                  .values(status="failed", error=error, finished_at=t,
                                          expires_at=t + self.result_ttl))

    async def delete_expired(self, limit: int = 500) -> list[str]:
        """Delete finished jobs past their expiry, with their files."""
        async with self.db.sessions() as session, session.begin():
            ids = list((await session.scalars(
                select(Job.id).where(Job.expires_at < now()).limit(limit))).all())
            if ids:
                await session.execute(delete(Job).where(Job.id.in_(ids), Job.expires_at < now()))
        for job_id in ids:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return ids
