"""The request log on real SQLite and PostgreSQL: batching, rollups, retention, the buffer bound,
and a PostgreSQL that goes away and comes back (through a TCP proxy the test stops and starts)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from kaset.store.db import Database
from kaset.store.log_tables import request_log, usage_daily
from kaset.store.request_log import LogRow, RequestLog
from tests.fixtures import postgres
from tests.fixtures.tcp_proxy import TcpProxy


def make_row(i: int, *, ts: float | None = None, key_id: int | None = 1, user_id: int | None = 10,
             model: str | None = "echo", status: int = 200, prompt: int = 3, completion: int = 5,
             audio: float = 0.0, images: int = 0, chars: int = 0, latency: float = 4.0,
             overhead: float = 0.5) -> LogRow:
    return (ts if ts is not None else time.time(), f"req-{i:06d}", key_id, user_id, "/v1/chat/completions", "POST",
            model, status, latency, overhead, prompt, completion, audio, images, chars)


async def request_ids(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(request_log.c.request_id).order_by(request_log.c.id))).scalars())


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.log_engine.sync_engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(db.log_engine.sync_engine, "before_cursor_execute", listen)


async def test_one_insert_per_flush(db: Database) -> None:
    log = RequestLog(db, flush_rows=1000)
    for i in range(2500):
        log.add(make_row(i))
    with statements(db) as sent:
        assert [await log.flush() for _ in range(4)] == [1000, 1000, 500, 0]
    inserts = [s for s in sent if s.lstrip().upper().startswith("INSERT INTO REQUEST_LOG")]
    assert len(inserts) == 3, "one multi-row INSERT per batch"
    assert inserts[0].count("),") == 999, "1000 rows in the first statement"
    assert await request_ids(db) == [f"req-{i:06d}" for i in range(2500)]
    assert log.written == 2500 and log.buffered == 0


async def test_row_contents_round_trip(db: Database) -> None:
    log = RequestLog(db)
    started = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC).timestamp()
    log.add((started, "rid-1", 7, None, "/v1/audio/speech", "POST", "piper-joe", 200, 12.5, 1.25, 0, 0, 2.5, 0, 42))
    await log.flush()
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(request_log))).mappings().one()
    assert row["ts"].replace(tzinfo=UTC) == datetime.fromtimestamp(started, UTC)
    assert (row["request_id"], row["key_id"], row["user_id"], row["route"], row["method"], row["model"]) == (
        "rid-1", 7, None, "/v1/audio/speech", "POST", "piper-joe")
    assert (row["status"], row["latency_ms"], row["overhead_ms"]) == (200, 12.5, 1.25)
    assert (row["prompt_tokens"], row["completion_tokens"], row["audio_seconds"], row["images"],
            row["characters"]) == (0, 0, 2.5, 0, 42)


async def test_background_flush_on_timer_and_on_full_batch(db: Database) -> None:
    timed = RequestLog(db, flush_rows=50, flush_interval_s=0.1)
    timed.start()
    try:
        timed.add(make_row(0))
        await wait_until(lambda: timed.written == 1, 5, "the timed flush")
    finally:
        await timed.close()
    # A 60 s timer: only a full batch can wake the flusher this fast.
    batched = RequestLog(db, flush_rows=50, flush_interval_s=60)
    batched.start()
    try:
        await asyncio.sleep(0.05)
        for i in range(1, 51):
            batched.add(make_row(i))
        await wait_until(lambda: batched.written == 50, 5, "the full-batch flush")
    finally:
        await batched.close()
    assert len(await request_ids(db)) == 51


async def test_close_writes_what_is_left(db: Database) -> None:
    log = RequestLog(db, flush_rows=100, flush_interval_s=60)
    log.start()
    for i in range(30):
        log.add(make_row(i))
    await log.close()
    assert len(await request_ids(db)) == 30


async def test_rollups_per_day_key_and_model(db: Database) -> None:
    day1 = datetime(2026, 5, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    day2 = datetime(2026, 5, 2, 0, 0, 1, tzinfo=UTC).timestamp()
    rows = [
        make_row(0, ts=day1, key_id=1, model="echo", prompt=3, completion=4, latency=10, overhead=1),
        make_row(1, ts=day1, key_id=1, model="echo", prompt=2, completion=1, status=500, latency=20, overhead=2),
        make_row(2, ts=day1, key_id=1, model="whisper-tiny.en", prompt=0, completion=0, audio=12.5),
        make_row(3, ts=day1, key_id=2, user_id=20, model="echo", prompt=1, completion=1),
        make_row(4, ts=day2, key_id=1, model="echo", prompt=7, completion=0, status=429),
        make_row(5, ts=day2, key_id=None, user_id=None, model=None, prompt=0, completion=0, status=404),
        make_row(6, ts=day2, key_id=2, user_id=20, model="piper-joe", prompt=0, completion=0, audio=1.5, chars=40),
        make_row(7, ts=day2, key_id=2, user_id=20, model="mango-disease", prompt=0, completion=0, images=1),
    ]
    # Three batches: later ones must add to the rollups earlier ones made.
    log = RequestLog(db, flush_rows=3)
    for row in rows:
        log.add(row)
    await log.flush_all()
    # Expected sums, computed the plain way.
    expected: dict[tuple[date, int, str], dict[str, Any]] = {}
    for row in rows:
        key = (datetime.fromtimestamp(row[0], UTC).date(), row[2] or 0, row[6] or "")
        acc = expected.setdefault(key, {"user_id": row[3], "requests": 0, "errors": 0, "prompt_tokens": 0,
                                        "completion_tokens": 0, "audio_seconds": 0.0, "images": 0, "characters": 0,
                                        "latency_ms_sum": 0.0, "overhead_ms_sum": 0.0})
        acc["requests"] += 1
        acc["errors"] += row[7] >= 400
        acc["prompt_tokens"] += row[10]
        acc["completion_tokens"] += row[11]
        acc["audio_seconds"] += row[12]
        acc["images"] += row[13]
        acc["characters"] += row[14]
        acc["latency_ms_sum"] += row[8]
        acc["overhead_ms_sum"] += row[9]
    async with db.engine.connect() as conn:
        got = {(r["day"], r["key_id"], r["model"]): {k: v for k, v in r.items() if k not in ("day", "key_id", "model")}
               for r in (await conn.execute(select(usage_daily))).mappings()}
    assert got == expected
    assert got[(date(2026, 5, 1), 1, "echo")]["errors"] == 1
    assert got[(date(2026, 5, 2), 0, "")]["requests"] == 1


async def test_retention_deletes_old_rows_in_small_batches(db: Database) -> None:
    now = datetime.now(UTC)
    log = RequestLog(db, retention_days=30, retention_batch=7)
    old = (now - timedelta(days=40)).timestamp()
    recent = (now - timedelta(days=10)).timestamp()
    for i in range(20):
        log.add(make_row(i, ts=old))
    for i in range(20, 28):
        log.add(make_row(i, ts=recent))
    await log.flush_all()
    with statements(db) as sent:
        assert await log.delete_expired(pause_s=0) == 20
    deletes = [s for s in sent if s.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3, "7 + 7 + 6 rows, one small transaction each"
    assert await request_ids(db) == [f"req-{i:06d}" for i in range(20, 28)]
    assert await log.delete_expired() == 0
    # The rollups keep the deleted days.
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT SUM(requests) FROM usage_daily"))).scalar_one() == 28


async def test_retention_off(db: Database) -> None:
    log = RequestLog(db, retention_days=0)
    log.add(make_row(0, ts=time.time() - 1000 * 86400))
    await log.flush_all()
    assert await log.delete_expired() == 0
    assert len(await request_ids(db)) == 1


async def test_full_buffer_drops_the_oldest_and_says_so(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(db, max_rows=10, flush_rows=5)
    with caplog.at_level(logging.ERROR, logger="kaset.store.request_log"):
        for i in range(15):
            log.add(make_row(i))
    assert (log.buffered, log.dropped) == (10, 5)
    assert any("dropped" in r.getMessage() and "buffer full" in r.getMessage() for r in caplog.records)
    await log.flush_all()
    assert await request_ids(db) == [f"req-{i:06d}" for i in range(5, 15)]


# --- PostgreSQL going away ---------------------------------------------------------------------


async def test_postgres_down_rows_stay_buffered_and_are_written_when_it_returns(
        pg_database: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(postgres.url(pg_database, port=proxy.port))
    direct = Database(postgres.url(pg_database))
    async with direct.engine.begin() as conn:
        await conn.execute(text("DELETE FROM request_log"))
    proxy.start()
    log = RequestLog(db, max_rows=100, flush_rows=20, flush_interval_s=0.05)
    log.start()
    try:
        for i in range(5):
            log.add(make_row(i))
        await wait_until(lambda: log.written == 5, 10, "the first rows")
        proxy.stop()  # cuts the pooled connection too
        with caplog.at_level(logging.WARNING, logger="kaset.store.request_log"):
            for i in range(5, 155):
                log.add(make_row(i))
            await wait_until(lambda: log.flush_failures >= 2, 15, "failed flushes")
            # Bounded: the 100 newest rows wait, the 50 oldest of the outage were dropped.
            assert (log.buffered, log.dropped, log.written) == (100, 50, 5)
            proxy.start()
            await wait_until(lambda: log.written == 105, 20, "the buffered rows after the database returned")
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "cannot write to the database" in messages and "reachable again" in messages
    finally:
        await log.close()
        await db.close()
    ids = await request_ids(direct)
    await direct.close()
    assert ids == [f"req-{i:06d}" for i in [*range(5), *range(55, 155)]], "every kept row, once, in order"
