"""The request log: one row per request, buffered in memory and written in batches.

The request path only appends a tuple to a deque (no I/O, no await). A background task
writes the buffer every `flush_interval_s`, or sooner once `flush_rows` rows are waiting,
with one multi-row INSERT per batch, and in the same transaction adds the batch to the
daily rollups (`usage_daily`) with upserts. Rollups are updated by the flusher rather than
by a periodic job because then (a) a row and its rollup commit together, so they can never
disagree or double count, (b) nothing has to scan raw rows or keep a watermark, (c) several
gateway replicas can write at once (the upserts only add), and (d) rollups stay right after
retention deletes the raw rows.

When the database is unreachable, the batch goes back to the front of the buffer and the
flusher retries with backoff while requests keep being served. The buffer holds at most
`max_rows` rows (default 100,000, about 30 MB): beyond that the oldest rows are dropped,
counted in `dropped` (the `kaset_request_log_dropped_rows_total` metric) and reported in an
error log line at most every 10 s. Rows still buffered when the server stops while the
database is down are lost, and the shutdown log says how many.

Large payloads never reach a row: it holds ids, the route template, the model, the status,
timings and unit counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from kaset.store.db import Database
from kaset.store.log_tables import LOG_COLUMNS, ROLLUP_SUMS, request_log, usage_daily

log = logging.getLogger(__name__)

# (ts epoch seconds, request id, key id, user id, route, method, model, status, latency ms,
#  overhead ms, prompt tokens, completion tokens, audio seconds, images, characters):
# LOG_COLUMNS order. A tuple costs less to build and keep than a dict or dataclass.
LogRow = tuple[float, str, int | None, int | None, str, str, str | None, int, float, float, int, int, float, int,
               int]

_MIN_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 5.0
_WARN_EVERY_S = 30.0
_DROP_WARN_EVERY_S = 10.0
# The rollup upsert's columns: the group, the key's user, then the sums (see _prepare).
_ROLLUP_COLUMNS = ("day", "key_id", "model", "user_id", *ROLLUP_SUMS)


class RequestLog:
    def __init__(self, db: Database, *, max_rows: int = 100_000, flush_rows: int = 1000,
                 flush_interval_s: float = 1.0, retention_days: int = 30, retention_batch: int = 5000,
                 retention_interval_s: float = 3600.0, write_timeout_s: float = 15.0) -> None:
        self.db = db
        self.max_rows = max(1, max_rows)
        # A statement holds flush_rows x 15 parameters: PostgreSQL and SQLite take 32,766 at most.
        self.flush_rows = max(1, min(flush_rows, self.max_rows, 2000))
        self.flush_interval_s = flush_interval_s
        self.retention_days = retention_days
        self.retention_batch = retention_batch
        self.retention_interval_s = retention_interval_s
        self.write_timeout_s = write_timeout_s
        self.written = 0
        self.dropped = 0
        self.flush_failures = 0
        self._rows: deque[LogRow] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._last_warning = 0.0
        self._last_drop_warning = 0.0
        self._dropped_at_warning = 0
        dialect = db.log_engine.dialect
        self._placeholder = _placeholders(dialect.paramstyle)
        # SQLite stores timestamps as text: write them exactly as SQLAlchemy would, so that
        # queries built with SQLAlchemy (retention's `ts < cutoff`) compare like with like.
        self._ts_to_db: Callable[[datetime], Any] | None = (
            request_log.c.ts.type.dialect_impl(dialect).bind_processor(dialect))
        probe = self._ts_to_db(datetime(2000, 1, 1, tzinfo=UTC)) if self._ts_to_db is not None else None
        if probe is not None and probe != "2000-01-01 00:00:00.000000":
            raise ValueError(f"request log: unexpected timestamp format for {dialect.name}: {probe!r}")
        self._day_to_db: Callable[[date], Any] | None = (
            usage_daily.c.day.type.dialect_impl(dialect).bind_processor(dialect))
        self._sql: dict[tuple[str, int], str] = {}

    # --- the request path ------------------------------------------------------------------

    def add(self, row: LogRow) -> None:
        """Buffer one row. Never blocks and never fails; drops the oldest row when full."""
        rows = self._rows
        if len(rows) + self._in_flight >= self.max_rows:
            if rows:
                rows.popleft()
                rows.append(row)
            self._count_drop()
        else:
            rows.append(row)
        if len(rows) >= self.flush_rows and not self._wake.is_set():
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._rows) + self._in_flight

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARN_EVERY_S:
            log.error("request log: buffer full (%d rows) because the database is unreachable; dropped the %d "
                      "oldest rows since the last report (%d in all)", self.max_rows,
                      self.dropped - self._dropped_at_warning, self.dropped)
            self._last_drop_warning = now
            self._dropped_at_warning = self.dropped

    # --- writing -------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write one batch (at most `flush_rows` rows) with one INSERT; returns the rows written.

        On any failure the batch goes back to the front of the buffer and the error is raised.
        """
        if not self._rows:
            return 0
        count = min(len(self._rows), self.flush_rows)
        batch = [self._rows.popleft() for _ in range(count)]
        self._in_flight = count
        committed = False
        try:
            params, rollups = self._prepare(batch)
            async with self.db.log_engine.begin() as conn:
                await conn.exec_driver_sql(self._statement("log", count), params)
                # One prepared single-row upsert run for each group (executemany): the number
                # of groups varies from batch to batch, and a new multi-row statement text
                # each time would be parsed and planned anew each time.
                await conn.exec_driver_sql(self._statement("rollup", 1), rollups)
            committed = True
        finally:
            self._in_flight = 0
            if not committed:
                self._rows.extendleft(reversed(batch))
        self.written += count
        return count

    async def flush_all(self, timeout_s: float | None = None) -> int:
        """Write everything buffered now (tests, shutdown). Raises if the database fails."""
        written = 0
        async with asyncio.timeout(timeout_s):
            while self._rows:
                written += await self.flush()
        return written

    def _statement(self, kind: str, count: int) -> str:
        """The multi-row INSERT of `count` log rows, or the rollup upsert of `count` groups.

        Hand-written SQL (the same for SQLite and PostgreSQL) with positional parameters: one
        INSERT per batch whatever its size, and no per-row parameter processing in Python.
        """
        sql = self._sql.get((kind, count))
        if sql is None:
            columns = LOG_COLUMNS if kind == "log" else _ROLLUP_COLUMNS
            width = len(columns)
            values = ", ".join("(" + ", ".join(self._placeholder(r * width + c + 1) for c in range(width)) + ")"
                               for r in range(count))
            table = "request_log" if kind == "log" else "usage_daily"
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"
            if kind == "rollup":
                # The batch is already summed per (day, key, model), so no two VALUES rows
                # conflict with each other (PostgreSQL refuses that).
                sums = ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in ROLLUP_SUMS)
                sql += (f" ON CONFLICT (day, key_id, model) DO UPDATE SET {sums}, "
                        "user_id = COALESCE(excluded.user_id, usage_daily.user_id)")
            if len(self._sql) > 128:  # partial batches vary in size; keep the cache small
                self._sql.clear()
            self._sql[(kind, count)] = sql
        return sql

    def _prepare(self, batch: Sequence[LogRow]) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """The flat parameters of the log INSERT, and the batch summed per (day, key, model)."""
        params: list[Any] = []
        sums: dict[tuple[date, int, str], list[Any]] = {}
        to_db = self._ts_to_db
        # Rows arrive many per second: the date, and SQLite's "YYYY-MM-DD HH:MM:SS." text, are
        # made once per second (this loop runs on the event loop, once per logged request).
        second = -1
        day = date.min
        prefix = ""
        for row in batch:
            ts = row[0]
            if int(ts) != second:
                second = int(ts)
                whole = datetime.fromtimestamp(second, UTC)
                day = whole.date()
                if to_db is not None:
                    prefix = to_db(whole)[:-6]
            if to_db is None:
                params.append(datetime.fromtimestamp(ts, UTC))
            else:
                micros = round((ts - second) * 1e6)
                params.append(f"{prefix}{micros:06d}" if micros < 1_000_000 else to_db(datetime.fromtimestamp(ts, UTC)))
            params.extend(row[1:])
            key = (day, row[2] or 0, row[6] or "")
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = [row[3], 0, 0, 0, 0, 0.0, 0, 0, 0.0, 0.0]
            acc[1] += 1
            acc[2] += row[7] >= 400
            acc[3] += row[10]
            acc[4] += row[11]
            acc[5] += row[12]
            acc[6] += row[13]
            acc[7] += row[14]
            acc[8] += row[8]
            acc[9] += row[9]
        day_to_db = self._day_to_db
        rollups = [(day_to_db(day) if day_to_db is not None else day, key_id, model, *acc)
                   for (day, key_id, model), acc in sums.items()]
        return tuple(params), rollups

    # --- the background tasks ------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._run(), name="request-log-flusher")
        if self.retention_days > 0:
            self._retention = asyncio.create_task(self._retention_loop(), name="request-log-retention")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the tasks, then try (for at most `timeout_s`) to write what is still buffered."""
        self._stopping.set()
        self._wake.set()
        if self._retention is not None:
            # A delete cancelled half-way just rolls back; the next start deletes again.
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        if self._flusher is not None:
            # Let the flusher finish the batch it is writing rather than cancel it mid-commit,
            # where nobody could tell whether the rows were stored (and they would be written twice).
            done, _ = await asyncio.wait({self._flusher}, timeout=self.write_timeout_s + 1)
            if not done:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
        self._flusher = self._retention = None
        try:
            await self.flush_all(timeout_s)
        except Exception as exc:  # the database is down at shutdown: say what is lost
            log.error("request log: %d rows could not be written at shutdown (%s)", self.buffered, _short(exc))

    async def _run(self) -> None:
        backoff = _MIN_BACKOFF_S
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            # One batch per tick, more at once only while full batches are waiting (a backlog
            # after an outage): small leftovers wait for the next tick instead of trickling.
            while self._rows and not self._stopping.is_set():
                try:
                    # A batch timed out while committing may have been stored and is written
                    # again: at-least-once, never lost (request_id tells the copies apart).
                    await asyncio.wait_for(self.flush(), self.write_timeout_s)
                except Exception as exc:
                    self._failed(exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
                    continue
                backoff = _MIN_BACKOFF_S
                self._recovered()
                if len(self._rows) < self.flush_rows:
                    break

    def _failed(self, exc: BaseException) -> None:
        self.flush_failures += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._last_warning = now
            log.warning("request log: cannot write to the database (%s); keeping rows in memory (%d buffered, "
                        "the oldest are dropped beyond %d) and retrying", _short(exc), self.buffered, self.max_rows)
        elif now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("request log: database still unreachable after %.0f s (%s); %d rows buffered, %d dropped",
                        now - self._down_since, _short(exc), self.buffered, self.dropped)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("request log: database reachable again after %.0f s; writing %d buffered rows",
                        time.monotonic() - self._down_since, self.buffered)
            self._down_since = None

    # --- retention -------------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        # Not at the very start: let the server come up (and models load) first.
        await asyncio.sleep(min(60.0, self.retention_interval_s))
        while True:
            try:
                deleted = await self.delete_expired()
                if deleted:
                    log.info("request log: deleted %d rows older than %d days", deleted, self.retention_days)
            except Exception as exc:
                log.warning("request log: retention failed (%s); retrying in %.0f s", _short(exc),
                            self.retention_interval_s)
            await asyncio.sleep(self.retention_interval_s)

    async def delete_expired(self, now: datetime | None = None, pause_s: float = 0.05) -> int:
        """Delete raw rows older than `retention_days`, `retention_batch` rows per transaction so
        no lock is held long and other writers get in between. Rollups are kept."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        total = 0
        while True:
            expired = (select(request_log.c.id).where(request_log.c.ts < cutoff)
                       .limit(self.retention_batch).scalar_subquery())
            async with self.db.log_engine.begin() as conn:
                result = await conn.execute(delete(request_log).where(request_log.c.id.in_(expired)))
            deleted = int(result.rowcount or 0)
            total += deleted
            if deleted < self.retention_batch:
                return total
            await asyncio.sleep(pause_s)


def _placeholders(paramstyle: str) -> Callable[[int], str]:
    if paramstyle == "qmark":
        return lambda n: "?"
    if paramstyle == "numeric_dollar":
        return lambda n: f"${n}"
    if paramstyle == "numeric":
        return lambda n: f":{n}"
    if paramstyle in ("format", "pyformat"):
        return lambda n: "%s"
    raise ValueError(f"request log: unsupported DB-API paramstyle {paramstyle!r}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
