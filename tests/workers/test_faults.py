"""Worker faults: a replica killed mid-request, one never ready, a slow one, a draining one."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.worker_process import worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, stub_process, wait_replica


@pytest.fixture
def echo_env(models_dir: Path) -> dict[str, str]:
    return {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN}


def _gw(tmp_path: Path) -> Path:
    path = tmp_path / "gw"
    path.mkdir(exist_ok=True)
    return path


def _hits(url: str) -> int:
    return len(httpx.get(f"{url}/stub/hits", timeout=5).json())


def test_idempotent_request_is_retried_when_a_replica_dies(tmp_path: Path, models_dir: Path,
                                                           echo_env: dict[str, str]) -> None:
    with worker_process(tmp_path, "echo", echo_env) as real, stub_process(tmp_path, "--delay", "30") as stub, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [real.url, stub.url])) as gateway:
        wait_replica(gateway, real.url)
        wait_replica(gateway, stub.url)

        def embed(i: int) -> httpx.Response:
            return httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": f"x{i}"},
                              timeout=20)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(embed, i) for i in range(4)]
            deadline = time.monotonic() + 10
            while _hits(stub.url) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _hits(stub.url) >= 1  # some calls are hanging in the stub...
            os.kill(stub.proc.pid, signal.SIGKILL)  # ...when it dies
            started = time.monotonic()
            responses = [f.result() for f in futures]
        assert time.monotonic() - started < 10
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        # The real worker's answers (the stub's vectors are all 7s).
        assert all(r.json()["data"][0]["embedding"][0] != 7.0 for r in responses)


def test_streamed_request_on_a_dying_replica_gets_a_clean_503(tmp_path: Path, models_dir: Path) -> None:
    with stub_process(tmp_path, "--delay", "30") as stub, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [stub.url])) as gateway:
        wait_replica(gateway, stub.url)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(httpx.post, f"{gateway}/v1/chat/completions", headers=auth(), timeout=20,
                                 json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]})
            deadline = time.monotonic() + 10
            while _hits(stub.url) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(stub.proc.pid, signal.SIGKILL)
            response = future.result(timeout=15)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "worker_unavailable"
        assert response.headers["retry-after"] == "1"


def test_replica_never_ready_gets_no_traffic(tmp_path: Path, models_dir: Path, echo_env: dict[str, str]) -> None:
    with worker_process(tmp_path, "echo", echo_env) as real, stub_process(tmp_path, "--unready") as stub, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [real.url, stub.url])) as gateway:
        wait_replica(gateway, real.url)
        wait_replica(gateway, stub.url, ready=False)
        for i in range(10):
            r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": f"x{i}"})
            assert r.status_code == 200, r.text
        assert _hits(stub.url) == 0


def test_only_unready_replicas_means_503(tmp_path: Path, models_dir: Path) -> None:
    with stub_process(tmp_path, "--unready") as stub, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [stub.url])) as gateway:
        wait_replica(gateway, stub.url, ready=False)
        started = time.monotonic()
        r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": "x"})
        assert time.monotonic() - started < 2
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "worker_unavailable"
        assert _hits(stub.url) == 0


def test_slow_replica_times_out_then_its_breaker_opens(tmp_path: Path, models_dir: Path) -> None:
    env = gateway_env(models_dir, [], KASET_WORKER_TIMEOUT_S="0.5", KASET_BREAKER_FAILURES="2",
                      KASET_BREAKER_COOLDOWN_S="60")
    with stub_process(tmp_path, "--delay", "5") as stub:
        env["KASET_WORKER_URLS"] = stub.url
        with gateway_process(_gw(tmp_path), env) as gateway:
            wait_replica(gateway, stub.url)
            for _ in range(2):
                started = time.monotonic()
                r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": "x"},
                               timeout=10)
                assert r.status_code == 504, r.text
                assert r.json()["error"]["code"] == "worker_timeout"
                assert time.monotonic() - started < 2
            hits = _hits(stub.url)
            r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": "x"})
            assert r.status_code == 503  # breaker open: fails fast, the slow replica is not called
            assert _hits(stub.url) == hits


def _requests_in_flight(url: str) -> float:
    """The worker's HTTP requests in flight, less the /metrics scrape asking."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("kaset_requests_in_flight "):
            return float(line.split()[1]) - 1
    return 0.0


def test_sigterm_drains(tmp_path: Path, models_dir: Path, installed: object) -> None:
    installed("e5-small")  # type: ignore[operator]
    env = {"KASET_MODELS_DIR": str(models_dir), "MAX_CONCURRENT_INFERENCES": "1"}
    with worker_process(tmp_path, "e5-small", env) as worker:
        detail = httpx.get(f"{worker.url}/v1/models/e5-small").json()
        assert detail["lifecycle"]["max_concurrent"] == 1  # MAX_CONCURRENT_INFERENCES over the catalog's
        texts = ["ยินดีต้อนรับ สู่ระบบ ทดสอบ การ ระบาย งาน " * 3] * 8

        def embed(i: int) -> httpx.Response:
            return httpx.post(f"{worker.url}/v1/embeddings", json={"model": "e5-small", "input": texts},
                              timeout=30)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(embed, i) for i in range(4)]
            # SIGTERM only once all four are in (a fixed sleep raced a loaded machine).
            deadline = time.monotonic() + 10
            while _requests_in_flight(worker.url) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            worker.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            ready = httpx.get(f"{worker.url}/health/ready", timeout=5)
            refused = httpx.post(f"{worker.url}/v1/embeddings", json={"model": "e5-small", "input": "x"}, timeout=5)
            responses = [f.result() for f in futures]
        assert ready.status_code == 503
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "worker_draining"
        assert [r.status_code for r in responses] == [200] * 4
        assert worker.proc.wait(timeout=20) == 0


def test_stream_cut_by_a_dying_replica_ends_with_an_in_band_error(tmp_path: Path, models_dir: Path) -> None:
    with stub_process(tmp_path, "--die-mid-stream") as stub, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [stub.url])) as gateway:
        wait_replica(gateway, stub.url)
        started = time.monotonic()
        lines = []
        with httpx.stream("POST", f"{gateway}/v1/chat/completions", headers=auth(), timeout=10,
                          json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert time.monotonic() - started < 5
        texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[1:4]]
        assert texts == ["n0 ", "n1 ", "n2 "]  # what the worker sent before dying reached the client...
        assert '"code": "worker_lost"' in lines[-2] and lines[-1] == "data: [DONE]"  # ...then an in-band error


def test_rolling_stop_of_a_replica_loses_no_idempotent_call(tmp_path: Path, models_dir: Path,
                                                            echo_env: dict[str, str]) -> None:
    with worker_process(tmp_path, "echo", echo_env) as a, worker_process(tmp_path, "echo", echo_env) as b, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [a.url, b.url])) as gateway:
        wait_replica(gateway, a.url)
        wait_replica(gateway, b.url)

        def embed(i: int) -> int:
            if i == 20:
                a.proc.send_signal(signal.SIGTERM)  # A drains and stops while calls keep coming
            return httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": f"x{i}"},
                              timeout=20).status_code

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(embed, range(120)))
        assert statuses == [200] * 120
        assert a.proc.wait(timeout=20) == 0
        wait_replica(gateway, a.url, ready=False)


def test_first_call_after_gateway_start_goes_to_the_worker(tmp_path: Path, models_dir: Path,
                                                           echo_env: dict[str, str]) -> None:
    with worker_process(tmp_path, "echo", echo_env) as worker, \
            gateway_process(_gw(tmp_path), gateway_env(models_dir, [worker.url])) as gateway:
        r = httpx.post(f"{gateway}/v1/embeddings", headers=auth(), json={"model": "echo", "input": "x"})
        assert r.status_code == 200
        forwarded = [line for line in httpx.get(f"{gateway}/metrics").text.splitlines()
                     if line.startswith("kaset_worker_requests_total{") and 'outcome="ok"' in line]
        assert forwarded and float(forwarded[0].rsplit(" ", 1)[1]) == 1.0
