"""Helpers for worker tests: stub workers, a gateway in front of workers, waiting on its view."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.fixtures.gateway_process import wait_ready
from tests.fixtures.tcp_proxy import free_port
from tests.fixtures.worker_process import WorkerProcess

KEY = "ksk-workers-test-" + "0" * 32
TOKEN = "worker-secret-for-tests"
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def stub_process(tmp: Path, *args: str, wait: bool = True) -> Iterator[WorkerProcess]:
    """tests/workers/stub_worker.py in its own process (so it can be SIGKILLed)."""
    port = free_port()
    log_path = tmp / f"stub-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.workers.stub_worker", "--port", str(port), *args],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        stub = WorkerProcess(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            if wait:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        httpx.get(f"{stub.url}/stub/hits", timeout=1)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                else:
                    pytest.fail(stub.log())
            yield stub
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def gateway_env(models_dir: Path, urls: list[str], **extra: str) -> dict[str, str]:
    return {"KASET_MODELS_DIR": str(models_dir), "KASET_BOOTSTRAP_KEY": KEY, "KASET_MODELS": "[]",
            "KASET_WORKER_URLS": ",".join(urls), "KASET_WORKER_TOKEN": TOKEN,
            "KASET_WORKER_POLL_INTERVAL_S": "0.2", "KASET_REQUEST_LOG": "false", **extra}


def replica_state(gateway: str, url: str) -> tuple[float, float] | None:
    """(up, ready) of a replica as the gateway's /metrics says, None when it does not know it."""
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    up = ready = None
    for line in text.splitlines():
        if f'replica="{url}"' in line:
            if line.startswith("kaset_worker_replica_up{"):
                up = float(line.rsplit(" ", 1)[1])
            elif line.startswith("kaset_worker_replica_ready{"):
                ready = float(line.rsplit(" ", 1)[1])
    return None if up is None or ready is None else (up, ready)


def wait_replica(gateway: str, url: str, ready: bool = True, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    want = 1.0 if ready else 0.0
    while time.monotonic() < deadline:
        state = replica_state(gateway, url)
        if state is not None and state[1] == want:
            return
        time.sleep(0.1)
    pytest.fail(f"gateway never saw {url} ready={ready}: {replica_state(gateway, url)}")


def ok_calls_by_replica(gateway: str) -> dict[str, float]:
    """Calls each replica answered ok, as the gateway's kaset_worker_requests_total says."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{gateway}/metrics").text.splitlines():
        if line.startswith("kaset_worker_requests_total{") and 'outcome="ok"' in line:
            replica = line.split('replica="', 1)[1].split('"', 1)[0]
            counts[replica] = counts.get(replica, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


__all__ = ["KEY", "TOKEN", "auth", "gateway_env", "ok_calls_by_replica", "replica_state", "stub_process", "wait_ready",
           "wait_replica"]
