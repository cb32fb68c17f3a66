"""The request log's sustained write rate and the database growth per million requests.

For SQLite (a file in a temporary folder) and PostgreSQL (a throwaway database on
127.0.0.1:5432, dropped afterwards), the real writer (kaset.store.request_log.RequestLog) is
fed realistic rows as fast as it drains them: the producer keeps the buffer between one and
ten batches deep, so the flusher writes batch after batch (one multi-row INSERT plus the rollup
upserts per batch) with no idle time. Reported per backend, median over rounds:

* rows/s written, and CPU per row (this process, all threads: the aiosqlite worker included;
  PostgreSQL's own server CPU is not in it);
* bytes per row on disk: SQLite file growth, or pg_total_relation_size of request_log (heap,
  indexes, TOAST) plus usage_daily; and so MB per million requests.

    .venv/bin/python bench/request_log.py [--rounds 3] [--seconds 10] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from _common import machine, median, print_machine, table, write_json
from kaset.store.db import Database
from kaset.store.request_log import LogRow, RequestLog

PG = {"host": os.environ.get("KASET_BENCH_PG_HOST", "127.0.0.1"),
      "port": int(os.environ.get("KASET_BENCH_PG_PORT", "5432")), "user": os.environ.get("KASET_BENCH_PG_USER",
                                                                                         "postgres")}
ROUTES = [("/v1/chat/completions", "smollm2-135m"), ("/v1/embeddings", "e5-small"),
          ("/v1/audio/transcriptions", "whisper-tiny.en"), ("/v1/audio/speech", "piper-joe"),
          ("/v1/translate", "apertium"), ("/v2/models/{name}/infer", "efficientnet-lite0"),
          ("/v1/diagnose", "mango-disease@2")]


def make_rows(count: int, seed: int = 1) -> list[LogRow]:
    """Rows shaped like real traffic: 50 keys of 20 users, the routes above, 2% errors."""
    rng = random.Random(seed)
    now = time.time()
    rows: list[LogRow] = []
    for i in range(count):
        route, model = ROUTES[rng.randrange(len(ROUTES))]
        key = rng.randrange(1, 51)
        latency = rng.uniform(1, 400)
        rows.append((now + i * 1e-4, f"{secrets.token_hex(8)}{i:06x}", key, key % 20 + 1, route, "POST", model,
                     200 if rng.random() > 0.02 else 429, latency, rng.uniform(0.1, 1.5),
                     rng.randrange(5, 200) if "chat" in route or "embed" in route else 0,
                     rng.randrange(1, 120) if "chat" in route else 0,
                     rng.uniform(1, 30) if "audio" in route else 0.0,
                     1 if "infer" in route or "diagnose" in route else 0,
                     rng.randrange(10, 400) if "speech" in route or "translate" in route else 0))
    return rows


async def size_bytes(db: Database, sqlite: bool) -> int:
    """Bytes the database holds: SQLite's pages in use, or PostgreSQL's request_log and
    usage_daily relations (heap, indexes, TOAST)."""
    async with db.engine.connect() as conn:
        if sqlite:
            pages = (await conn.execute(text("PRAGMA page_count"))).scalar_one()
            free = (await conn.execute(text("PRAGMA freelist_count"))).scalar_one()
            page_size = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
            return int((pages - free) * page_size)
        result = await conn.execute(text(
            "SELECT pg_total_relation_size('request_log') + pg_total_relation_size('usage_daily')"))
        return int(result.scalar_one())


async def one_round(url: str, sqlite: bool, seconds: float, flush_rows: int) -> dict[str, float]:
    db = Database(url)
    await db.upgrade()
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM request_log"))
        await conn.execute(text("DELETE FROM usage_daily"))
    size_before = await size_bytes(db, sqlite)
    rows = make_rows(flush_rows * 50)
    log = RequestLog(db, max_rows=10 * flush_rows + len(rows), flush_rows=flush_rows, flush_interval_s=0.05)
    log.start()
    produced = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds
    try:
        while time.perf_counter() < deadline:
            if log.buffered < 10 * flush_rows:
                for _ in range(flush_rows):
                    log.add(rows[produced % len(rows)])
                    produced += 1
                await asyncio.sleep(0)  # let the flusher run, as request handlers would
            else:
                await asyncio.sleep(0.001)
        written_at_deadline = log.written
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    finally:
        await log.close(timeout_s=60)
    async with db.engine.connect() as conn:
        stored = int((await conn.execute(text("SELECT COUNT(*) FROM request_log"))).scalar_one())
    size_after = await size_bytes(db, sqlite)
    await db.close()
    if stored != produced:
        raise RuntimeError(f"{produced} rows produced but {stored} stored")
    return {"rows_per_s": written_at_deadline / wall, "cpu_us_per_row": cpu / max(written_at_deadline, 1) * 1e6,
            "rows": stored, "bytes_per_row": (size_after - size_before) / stored}


async def _as_pg_admin(statement: str) -> None:
    """One statement run from the maintenance database `postgres` (a database cannot create or drop itself)."""
    conn = await asyncpg.connect(database="postgres", timeout=10, **PG)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_pg_database() -> str:
    name = f"kaset_bench_{os.getpid()}_{secrets.token_hex(4)}"
    await _as_pg_admin(f'CREATE DATABASE "{name}"')
    return name


async def drop_pg_database(name: str) -> None:
    await _as_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(backends: list[str], rounds: int, seconds: float, flush_rows: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    for backend in backends:
        results[backend] = []
        for round_no in range(1, rounds + 1):
            if backend == "sqlite":
                with tempfile.TemporaryDirectory(prefix="kaset-bench-log-") as tmp:
                    res = await one_round(f"sqlite+aiosqlite:///{Path(tmp) / 'kaset.db'}", True, seconds, flush_rows)
            else:
                name = await create_pg_database()
                try:
                    url = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
                    res = await one_round(url, False, seconds, flush_rows)
                finally:
                    await drop_pg_database(name)
            results[backend].append(res)
            print(f"round {round_no} {backend:10}: {res['rows_per_s']:.0f} rows/s, {res['cpu_us_per_row']:.1f} µs "
                  f"CPU/row, {res['bytes_per_row']:.0f} bytes/row ({res['rows']:.0f} rows)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="writing time per round (default 10)")
    parser.add_argument("--flush-rows", type=int, default=1000, help="rows per INSERT (the server's default)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results = asyncio.run(run(backends, args.rounds, args.seconds, args.flush_rows))
    rows: list[list[Any]] = []
    for backend, runs in results.items():
        per_row = median(r["bytes_per_row"] for r in runs)
        rows.append([backend, f"{median(r['rows_per_s'] for r in runs):,.0f}",
                     f"{median(r['cpu_us_per_row'] for r in runs):.1f} µs", f"{per_row:.0f}",
                     f"{per_row * 1e6 / 2**20:,.0f} MiB"])
    print()
    print(f"medians over {args.rounds} rounds of {args.seconds:.0f} s; {args.flush_rows} rows per INSERT")
    print(table(["database", "rows/s written", "writer CPU per row", "bytes per row", "per million requests"], rows))
    write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
