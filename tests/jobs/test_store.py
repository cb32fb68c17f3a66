"""The jobs table on SQLite and on the real PostgreSQL: atomic claims, fenced writes, resume, cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from kaset.jobs.store import JobStore, new_job_id
from kaset.store.db import Database, alembic_config
from tests.auth.conftest import db_url

__all__ = ["db_url"]


@pytest.fixture
async def stores(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[JobStore, JobStore]]:
    """Two stores on two engines: two runners (processes) sharing one database."""
    first, second = Database(db_url), Database(db_url)
    await first.upgrade()
    yield JobStore(first, tmp_path, 60), JobStore(second, tmp_path, 60)
    await first.close()
    await second.close()


async def _new(store: JobStore) -> str:
    job_id = new_job_id()
    await store.create(job_id, "transcribe", {"model": "whisper-1"}, owner_user_id=1, owner_key_id=2,
                       webhook_url=None)
    return job_id


async def test_two_runners_never_claim_the_same_job(stores: tuple[JobStore, JobStore]) -> None:
    a, b = stores
    ids = [await _new(a) for _ in range(20)]
    for job_id in ids:
        won = await asyncio.gather(a.claim(job_id, "runner-a"), b.claim(job_id, "runner-b"))
        claimed = [j for j in won if j is not None]
        assert len(claimed) == 1 and claimed[0].attempt == 1 and claimed[0].status == "in_progress"
    assert await a.pending_ids(100) == []


async def test_only_the_last_claim_can_write(stores: tuple[JobStore, JobStore]) -> None:
    a, b = stores
    job_id = await _new(a)
    first = await a.claim(job_id, "worker-1")
    assert first is not None
    # The first worker looks alive: a plain claim does not take the job over.
    assert await b.claim(job_id, "worker-2", stale_s=60) is None
    # Its message came back (the broker saw it die): taken over, attempt 2.
    second = await b.claim(job_id, "worker-2", take_over=True)
    assert second is not None and second.attempt == 2
    assert await a.finish(job_id, first.attempt, result={"text": "from the dead"}) is False
    assert await b.finish(job_id, second.attempt, result={"text": "once"}) is True
    assert await b.finish(job_id, second.attempt, result={"text": "twice"}) is False
    done = await a.get(job_id)
    assert done is not None and done.status == "completed" and done.result == {"text": "once"}
    assert done.attempt == 2 and done.expires_at is not None


async def test_stale_jobs_are_resumed_and_released_ones_come_back(stores: tuple[JobStore, JobStore]) -> None:
    a, b = stores
    job_id = await _new(a)
    claimed = await a.claim(job_id, "dies")
    assert claimed is not None
    assert await b.requeue_stale(60) == []
    await asyncio.sleep(0.05)
    assert await b.requeue_stale(0.01) == [job_id]
    again = await b.claim(job_id, "lives")
    assert again is not None and again.attempt == 2
    assert await b.release(job_id, again.attempt) is True
    pending = await a.get(job_id)
    assert pending is not None and pending.status == "pending"


async def test_cancel_retry_and_cleanup(stores: tuple[JobStore, JobStore], tmp_path: Path) -> None:
    a, _ = stores
    a.result_ttl = a.result_ttl * 0
    job_id = await _new(a)
    a.folder(job_id).mkdir(parents=True)
    (a.folder(job_id) / "audio-0").write_bytes(b"RIFF")
    assert await a.retry(job_id) is False  # pending: nothing to retry
    assert await a.cancel(job_id) is True
    assert await a.cancel(job_id) is False
    assert await a.retry(job_id) is True
    assert (await a.get(job_id)).status == "pending"  # type: ignore[union-attr]
    assert await a.cancel(job_id) is True
    await asyncio.sleep(0.01)
    assert await a.delete_expired() == [job_id]
    assert await a.get(job_id) is None and not a.folder(job_id).exists()


async def test_migration_0005_down_and_up(db_url: str) -> None:
    db = Database(db_url)
    await db.upgrade()

    def downgrade(sync: sa.Connection) -> None:
        command.downgrade(alembic_config(sync), "0004")

    async with db.engine.begin() as conn:
        await conn.run_sync(downgrade)
        tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    assert "jobs" not in tables
    await db.upgrade()
    async with db.engine.connect() as conn:
        indexes = await conn.run_sync(lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes("jobs")})
    assert {"ix_jobs_status_created_at", "ix_jobs_owner_user_id"} <= indexes
    await db.close()
