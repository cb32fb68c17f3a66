"""The whole gateway on PostgreSQL (through a TCP proxy the test stops and starts): with the
database down at start or mid-run, requests keep being served, request-log rows are buffered,
and they are all written once the database is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from kaset.app import create_app
from kaset.config import Settings
from kaset.store.db import Database
from kaset.store.log_tables import request_log
from kaset.store.request_log import RequestLog
from tests.fixtures import postgres
from tests.fixtures.tcp_proxy import TcpProxy

EMBED = {"model": "echo", "input": ["rice in the wet season"]}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def logged_ids(name: str, prefix: str) -> list[str]:
    async def read() -> list[str]:
        db = Database(postgres.url(name))
        try:
            async with db.engine.connect() as conn:
                query = select(request_log.c.request_id).where(request_log.c.request_id.startswith(prefix))
                return list((await conn.execute(query.order_by(request_log.c.id))).scalars())
        finally:
            await db.close()

    return asyncio.run(read())


def wait_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/health/ready").status_code == 200, 60, "the echo model")


def the_log(client: TestClient) -> RequestLog:
    log = client.app.state.metrics.request_log  # type: ignore[attr-defined]
    assert isinstance(log, RequestLog)
    return log


def settings_for(tmp_path: Path, models_dir: Path, url: str, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, models_dir=models_dir, models=["echo"], database_url=url,
                    request_log_flush_ms=100, **overrides)


def test_postgres_down_at_start(tmp_path: Path, models_dir: Path, pg_database: str, proxy: TcpProxy) -> None:
    # Keys are verified against the database (or its caches, empty at start), so this gateway
    # runs with authentication off: what is under test is serving and logging without it.
    settings = settings_for(tmp_path, models_dir, postgres.url(pg_database, port=proxy.port), auth_enabled=False)
    with TestClient(create_app(settings, announce_key=lambda key: None)) as client:
        wait_ready(client)
        for i in range(40):
            response = client.post("/v1/embeddings", json=EMBED, headers={"x-request-id": f"down-at-start-{i:03d}"})
            assert response.status_code == 200, response.text
        log = the_log(client)
        wait_until(lambda: log.flush_failures >= 1, 10, "a failed flush")
        assert (log.buffered, log.written, log.dropped) == (40, 0, 0)
        metrics = client.get("/metrics").text
        assert "kaset_request_log_buffered_rows 40.0" in metrics
        proxy.start()
        wait_until(lambda: log.written == 40, 20, "the buffered rows")
    assert logged_ids(pg_database, "down-at-start-") == [f"down-at-start-{i:03d}" for i in range(40)]


def test_postgres_down_mid_run_with_auth(tmp_path: Path, models_dir: Path, proxy: TcpProxy) -> None:
    proxy.start()
    with postgres.throwaway_database() as name:
        announced: list[str] = []
        settings = settings_for(tmp_path, models_dir, postgres.url(name, port=proxy.port))
        with TestClient(create_app(settings, announce_key=announced.append)) as client:
            client.headers["Authorization"] = f"Bearer {announced[0]}"
            wait_ready(client)
            log = the_log(client)
            sent: list[str] = []

            def call(tag: str, count: int) -> None:
                for i in range(count):
                    rid = f"mid-run-{tag}-{i:03d}"
                    response = client.post("/v1/embeddings", json=EMBED, headers={"x-request-id": rid})
                    assert response.status_code == 200, response.text
                    sent.append(rid)

            call("before", 10)
            wait_until(lambda: log.written == 10, 10, "rows before the outage")
            proxy.stop()
            # The verified key is cached in process: calls keep working without the database.
            call("during", 60)
            wait_until(lambda: log.flush_failures >= 2, 15, "failed flushes")
            assert log.written == 10 and log.buffered == 60
            proxy.start()
            wait_until(lambda: log.written == 70, 20, "the rows buffered during the outage")
            call("after", 5)
        # Shutdown wrote the last rows; every request is there exactly once.
        assert logged_ids(name, "mid-run-") == sent
