"""A gateway in front of two real `kaset worker` processes serving echo and e5-small."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.worker_process import WorkerProcess, worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, ok_calls_by_replica, wait_replica


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
             installed: object) -> Iterator[tuple[str, WorkerProcess, WorkerProcess]]:
    installed("e5-small")  # type: ignore[operator]
    tmp = tmp_path_factory.mktemp("workers")
    env = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN}
    with worker_process(tmp, "echo,e5-small", env) as a, worker_process(tmp, "echo,e5-small", env) as b:
        (tmp / "gw").mkdir()
        with gateway_process(tmp / "gw", gateway_env(models_dir, [a.url, b.url])) as gateway:
            wait_replica(gateway, a.url)
            wait_replica(gateway, b.url)
            yield gateway, a, b



def test_requests_are_forwarded_and_spread(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, a, b = topology
    before = ok_calls_by_replica(gateway)

    def embed(i: int) -> httpx.Response:
        return httpx.post(f"{gateway}/v1/embeddings", headers=auth(),
                          json={"model": "text-embedding-3-small", "input": f"hello {i}"}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(embed, range(24)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len(responses[0].json()["data"][0]["embedding"]) == 384
    after = ok_calls_by_replica(gateway)
    spread = {url: after.get(url, 0) - before.get(url, 0) for url in (a.url, b.url)}
    assert sum(spread.values()) == 24
    assert min(spread.values()) >= 4, spread


def test_the_gateway_lists_the_workers_models(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    listed = {m["id"]: m for m in httpx.get(f"{gateway}/v1/models", headers=auth()).json()["data"]}
    assert listed["e5-small"]["state"] == "remote" and listed["echo"]["state"] == "remote"
    assert "text-embedding-3-small" in listed  # aliases too


def test_streamed_chat_passes_through_chunk_by_chunk(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    words = " ".join(f"w{i}" for i in range(50))
    tokens_before = _tokens(gateway, "echo", "completion")
    events = []
    comments = []
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", headers=auth(), timeout=30,
                      json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            elif line.startswith(":"):
                comments.append(line)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == words
    assert len(chunks) > 50  # one event per word, not one buffered blob
    # The worker's usage trailer is counted by the gateway and not shown to the client.
    assert comments == []
    assert _tokens(gateway, "echo", "completion") - tokens_before == 50


def test_request_id_is_propagated(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    r = httpx.post(f"{gateway}/v1/chat/completions", headers={**auth(), "x-request-id": "trace-abc-123"},
                   json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get_list("x-request-id") == ["trace-abc-123"]
    assert r.json()["choices"][0]["message"]["content"] == "hi"


def test_gateway_still_checks_user_keys(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    r = httpx.post(f"{gateway}/v1/embeddings", json={"model": "echo", "input": "x"},
                   headers={"Authorization": "Bearer ksk-wrong"})
    assert r.status_code == 401


def test_worker_refuses_calls_without_its_token(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    _, a, _ = topology
    body = {"model": "echo", "input": "x"}
    assert httpx.post(f"{a.url}/v1/embeddings", json=body).status_code == 401
    wrong = httpx.post(f"{a.url}/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_worker_token"
    ok = httpx.post(f"{a.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    # Probes and scrapes stay open.
    assert httpx.get(f"{a.url}/health/ready").status_code == 200
    assert httpx.get(f"{a.url}/metrics").status_code == 200


def test_worker_warmup_and_v2_routes(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, a, _ = topology
    token = {"Authorization": f"Bearer {TOKEN}"}
    warmed = httpx.post(f"{a.url}/warmup", headers=token, timeout=30)
    assert warmed.status_code == 200
    assert set(warmed.json()["warmed"]) == {"echo", "e5-small"}
    assert httpx.get(f"{a.url}/v2/models/echo/ready", headers=token).status_code == 200
    # Through the gateway: the model name in the path routes it.
    assert httpx.get(f"{gateway}/v2/models/e5-small", headers=auth()).status_code == 200
    started = time.perf_counter()
    assert httpx.get(f"{gateway}/health/ready").status_code == 200
    assert time.perf_counter() - started < 5


def _tokens(gateway: str, model: str, kind: str) -> float:
    for line in httpx.get(f"{gateway}/metrics").text.splitlines():
        if line.startswith("kaset_tokens_total{") and f'model="{model}"' in line and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_forwarded_usage_and_time_are_accounted(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    before = _tokens(gateway, "echo", "completion")
    r = httpx.post(f"{gateway}/v1/chat/completions", headers=auth(),
                   json={"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}, timeout=30)
    assert r.status_code == 200
    assert "x-kaset-usage" not in r.headers
    assert r.headers["x-kaset-model"] == "echo"
    # The worker's time is not the gateway's overhead.
    assert float(r.headers["x-kaset-overhead-ms"]) < 50
    assert _tokens(gateway, "echo", "completion") - before == 3


def test_completions_and_model_details_are_served_by_the_workers(
        topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    """Routes that once ran only on models loaded in the gateway go through the model handle."""
    gateway, _, _ = topology
    before = sum(ok_calls_by_replica(gateway).values())
    done = httpx.post(f"{gateway}/v1/completions", headers=auth(), timeout=30,
                      json={"model": "echo", "prompt": "say this back", "max_tokens": 8})
    assert done.status_code == 200, done.text
    assert done.json()["choices"][0]["text"].strip()
    with httpx.stream("POST", f"{gateway}/v1/completions", headers=auth(), timeout=30,
                      json={"model": "echo", "prompt": "stream this back", "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2
    assert sum(ok_calls_by_replica(gateway).values()) - before >= 2  # both on worker replicas
    detail = httpx.get(f"{gateway}/v1/models/e5-small", headers=auth(), timeout=10).json()
    assert detail["state"] == "remote"
