"""Request log rows with units for real requests, /v1/usage and its scoping, /metrics, and the
Grafana dashboard's queries against the real /metrics output."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import select

from kaset.api.deps import authenticate
from kaset.app import create_app
from kaset.config import Settings
from kaset.metrics import Metrics
from kaset.store.log_tables import request_log
from kaset.store.request_log import RequestLog
from tests.fixtures.images import jpeg, mango_like_leaf

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kaset-dashboard.json"


def _log(client: TestClient) -> RequestLog:
    log = client.app.state.metrics.request_log  # type: ignore[attr-defined]
    assert isinstance(log, RequestLog)
    return log


def logged(client: TestClient, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The request-log rows of these requests, after writing out whatever is buffered."""
    log = _log(client)

    async def read() -> dict[str, dict[str, Any]]:
        await log.flush_all()
        async with log.db.engine.connect() as conn:
            query = select(request_log).where(request_log.c.request_id.in_(request_ids))
            return {row["request_id"]: dict(row) for row in (await conn.execute(query)).mappings()}

    return client.portal.call(read)  # type: ignore[union-attr]


def rid(name: str) -> str:
    return f"{name}-{secrets.token_hex(6)}"


def test_log_rows_carry_units(client: TestClient) -> None:
    ids: dict[str, str] = {name: rid(name) for name in (
        "e5", "echo", "speech", "speech-stream", "transcribe", "translate", "v2-image", "v2-text", "diagnose")}
    secret = "The farmer's private note: plant the durian on Tuesday."

    def post(name: str, path: str, **kwargs: Any) -> Any:
        response = client.post(path, headers={"x-request-id": ids[name]}, **kwargs)
        assert response.status_code == 200, (name, response.text)
        return response

    e5 = post("e5", "/v1/embeddings", json={"model": "e5-small", "input": ["rice blast on leaves", secret]}).json()
    echo = post("echo", "/v1/embeddings", json={"model": "echo", "input": "one two three"}).json()
    speech_text = "Water the rice field in the morning."
    wav = post("speech", "/v1/audio/speech", json={"model": "tts-1", "input": speech_text,
                                                    "response_format": "wav"}).content
    with client.stream("POST", "/v1/audio/speech", headers={"x-request-id": ids["speech-stream"]},
                       json={"model": "tts-1", "input": speech_text, "response_format": "pcm", "stream": True}) as s:
        streamed_pcm = b"".join(s.iter_bytes())
    post("transcribe", "/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
         data={"model": "whisper-1"})
    post("translate", "/v1/translate", json={"text": ["Good morning.", "The rice is green."], "source": "en",
                                             "target": "es"})
    post("v2-image", "/v2/models/efficientnet-lite0/infer", json={"inputs": [
        {"name": "IMAGE", "shape": [2, 8, 8, 3], "datatype": "UINT8", "data": [0] * 384}]})
    post("v2-text", "/v2/models/echo/infer", json={"inputs": [
        {"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["four five"]}]})
    leaf = base64.b64encode(jpeg(mango_like_leaf(1, 4))).decode()
    post("diagnose", "/v1/diagnose", json={"image": leaf, "crop": "mango"})

    rows = logged(client, list(ids.values()))
    assert set(rows) == set(ids.values()), "one row per request"
    row = {name: rows[ids[name]] for name in ids}
    for name, r in row.items():
        assert r["status"] == 200 and r["method"] == "POST" and r["key_id"] is not None, name
        assert r["latency_ms"] >= r["overhead_ms"] >= 0, name
        # Payloads never reach the log: no column holds the request's text.
        assert not any(isinstance(v, str) and "durian" in v for v in r.values()), name
    assert (row["e5"]["model"], row["e5"]["prompt_tokens"]) == ("e5-small", e5["usage"]["prompt_tokens"])
    assert row["e5"]["prompt_tokens"] > 0 and row["e5"]["route"] == "/v1/embeddings"
    assert (row["echo"]["model"], row["echo"]["prompt_tokens"]) == ("echo", echo["usage"]["prompt_tokens"])
    wav_seconds = (len(wav) - 44) / 2 / 22050
    assert row["speech"]["characters"] == len(speech_text)
    assert row["speech"]["audio_seconds"] == pytest.approx(wav_seconds, abs=0.01)
    assert row["speech-stream"]["characters"] == len(speech_text)
    assert row["speech-stream"]["audio_seconds"] == pytest.approx(len(streamed_pcm) / 2 / 22050, abs=0.01)
    assert row["transcribe"]["model"] == "whisper-tiny.en"
    assert row["transcribe"]["audio_seconds"] == pytest.approx(wav_seconds, abs=0.05)
    assert row["translate"]["characters"] == len("Good morning.") + len("The rice is green.")
    assert (row["v2-image"]["route"], row["v2-image"]["model"], row["v2-image"]["images"]) == (
        "/v2/models/{name}/infer", "efficientnet-lite0", 2)
    assert row["v2-text"]["model"] == "echo" and row["v2-text"]["prompt_tokens"] > 0
    assert row["diagnose"]["images"] == 1 and row["diagnose"]["model"]


def test_chat_rows_carry_tokens(client: TestClient) -> None:
    plain, streamed = rid("chat"), rid("chat-stream")
    body = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}
    usage = client.post("/v1/chat/completions", json=body, headers={"x-request-id": plain}).json()["usage"]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                       headers={"x-request-id": streamed}) as response:
        for _ in response.iter_lines():
            pass
    rows = logged(client, [plain, streamed])
    for request_id in (plain, streamed):
        assert rows[request_id]["prompt_tokens"] == usage["prompt_tokens"]
        assert rows[request_id]["completion_tokens"] == usage["completion_tokens"] > 0


def test_errors_are_logged_with_their_status(client: TestClient) -> None:
    bad, missing = rid("bad"), rid("missing")
    client.post("/v1/embeddings", json={"model": "echo", "input": ""}, headers={"x-request-id": bad})
    client.get(f"/no/such/path/{secrets.token_hex(4)}", headers={"x-request-id": missing})
    rows = logged(client, [bad, missing])
    assert (rows[bad]["status"], rows[bad]["route"]) == (400, "/v1/embeddings")
    assert (rows[missing]["status"], rows[missing]["route"]) == (404, "<unrouted>")


def test_own_usage_counts_new_requests(client: TestClient) -> None:
    def today() -> dict[str, Any]:
        logged(client, [])  # writes what is buffered, so the rollups include every request so far
        report = client.get("/v1/usage", params={"model": "e5-small"}).json()
        assert report["start"] <= datetime.now(UTC).date().isoformat() <= report["end"]
        return report["totals"]

    before = today()
    tokens = 0
    for text in ("first question", "second question about mango", "third"):
        tokens += client.post("/v1/embeddings", json={"model": "e5-small", "input": text}).json()["usage"][
            "prompt_tokens"]
    after = today()
    assert after["requests"] - before["requests"] == 3
    assert after["prompt_tokens"] - before["prompt_tokens"] == tokens


def test_usage_rejects_bad_ranges(client: TestClient) -> None:
    assert client.get("/v1/usage", params={"start": "2026-02-02", "end": "2026-02-01"}).status_code == 400
    assert client.get("/v1/usage", params={"start": "2020-01-01", "end": "2026-01-01"}).status_code == 400
    assert client.get("/v1/usage", headers={"Authorization": ""}).status_code == 401


# --- /v1/usage scoping, with callers of each kind --------------------------------------------------


@pytest.fixture(scope="module")
def scoped_client(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[TestClient]:
    """A gateway without models whose callers are named by a test header, and rollups for 4 keys:
    key 1 of user 10 (an admin), keys 2 and 3 of user 20, key 4 with no user (a pre-users key)."""
    callers = {
        "admin": SimpleNamespace(id=1, user_id=10, role="admin", is_admin=True),
        "user20": SimpleNamespace(id=2, user_id=20, role="consumer", is_admin=False),
        "legacy": SimpleNamespace(id=4, role="user", is_admin=False),
    }

    async def fake_authenticate(request: Request) -> object:
        caller = callers[request.headers["x-test-caller"]]
        request.state.key = caller
        return caller

    settings = Settings(data_dir=tmp_path_factory.mktemp("usage-scope"), models_dir=models_dir, models=[])
    app = create_app(settings, announce_key=lambda key: None)
    app.dependency_overrides[authenticate] = fake_authenticate
    with TestClient(app) as client:
        log = _log(client)
        now = datetime.now(UTC).timestamp()
        for key_id, user_id, model, count in ((1, 10, "echo", 1), (2, 20, "echo", 2), (3, 20, "e5-small", 3),
                                              (4, None, "echo", 4)):
            for i in range(count):
                log.add((now, f"seed-{key_id}-{i}", key_id, user_id, "/v1/embeddings", "POST", model, 200, 2.0, 1.0,
                         5, 0, 0.0, 0, 0))
        client.portal.call(log.flush_all)  # type: ignore[union-attr]
        yield client


def _keys(client: TestClient, caller: str, **params: Any) -> tuple[int, set[int]]:
    response = client.get("/v1/usage", headers={"x-test-caller": caller}, params=params)
    if response.status_code != 200:
        return response.status_code, set()
    return 200, {row["key_id"] for row in response.json()["data"]}


def test_usage_scoping(scoped_client: TestClient) -> None:
    c = scoped_client
    # A user sees every key of their own, and only those.
    assert _keys(c, "user20") == (200, {2, 3})
    assert _keys(c, "user20", key_id=3) == (200, {3})
    assert _keys(c, "user20", key_id=1) == (200, set()), "another user's key shows nothing"
    assert _keys(c, "user20", all="true") == (403, set())
    # A key from before users existed sees itself only.
    assert _keys(c, "legacy") == (200, {4})
    assert _keys(c, "legacy", key_id=1) == (403, set())
    # Admins: their own by default, any key on request, or everyone's.
    assert _keys(c, "admin") == (200, {1})
    assert _keys(c, "admin", key_id=2) == (200, {2})
    assert _keys(c, "admin", all="true") == (200, {1, 2, 3, 4})


def test_usage_report_shape(scoped_client: TestClient) -> None:
    report = scoped_client.get("/v1/usage", headers={"x-test-caller": "user20"}).json()
    assert report["user_id"] == 20 and report["all"] is False
    by_key = {row["key_id"]: row for row in report["data"]}
    assert by_key[3]["model"] == "e5-small" and by_key[3]["requests"] == 3 and by_key[3]["prompt_tokens"] == 15
    assert by_key[2]["mean_latency_ms"] == 2.0 and by_key[2]["mean_overhead_ms"] == 1.0
    assert report["totals"]["requests"] == 5 and report["totals"]["prompt_tokens"] == 25
    old = (date.today() - timedelta(days=100)).isoformat()
    empty = scoped_client.get("/v1/usage", headers={"x-test-caller": "admin"},
                              params={"all": "true", "start": old, "end": old}).json()
    assert empty["data"] == [] and empty["totals"]["requests"] == 0


# --- /metrics ----------------------------------------------------------------------------------------


def metric_names(text: str) -> set[str]:
    """Family names (from # TYPE lines) and sample names in a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_metrics_endpoint(client: TestClient) -> None:
    client.post("/v1/embeddings", json={"model": "e5-small", "input": "mango"})
    client.post("/v2/models/echo/infer", json={"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                                           "data": ["x"]}]})
    raw_path = f"/definitely/not/here/{secrets.token_hex(4)}"
    client.get(raw_path)
    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200, "no key needed"
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'kaset_requests_total\{model="e5-small",route="/v1/embeddings",status="200"\} [1-9]', text)
    assert 'route="/v2/models/{name}/infer"' in text and "/v2/models/echo/infer" not in text
    assert 'route="<unrouted>",status="404"' in text and raw_path not in text
    assert re.search(r'kaset_tokens_total\{kind="prompt",model="e5-small"\} [1-9]', text)
    assert re.search(r'kaset_gateway_overhead_seconds_bucket\{le="0.001",route="/v1/embeddings"\}', text)
    assert re.search(r'kaset_inference_seconds_count\{model="e5-small"\} [1-9]', text)
    assert re.search(r'kaset_model_in_flight\{model="e5-small"\} 0', text)
    assert re.search(r"kaset_models_loaded [1-9]", text)
    assert re.search(r'kaset_model_memory_estimate_bytes\{model="e5-small"\} [1-9]', text)
    assert re.search(r"process_resident_memory_bytes [1-9]", text)
    assert "kaset_request_log_buffered_rows " in text and "kaset_request_log_dropped_rows_total 0.0" in text
    names = metric_names(text)
    for name in ("kaset_requests_in_flight", "kaset_limit_rejections_total", "kaset_batch_size",
                 "kaset_audio_seconds_total", "kaset_request_log_written_rows_total"):
        assert name in names, name


def test_metrics_registries_are_per_app() -> None:
    first, second = Metrics(), Metrics()
    first.observe_request("/v1/embeddings", "echo", 200, 0.01, 0.001, 0.009, None)
    first.limit_rejected("requests_per_minute")
    second.batch_size("e5-small", 8)
    from prometheus_client import generate_latest

    one, two = generate_latest(first.registry).decode(), generate_latest(second.registry).decode()
    assert "kaset_requests_total{" in one and "kaset_requests_total{" not in two
    assert 'kaset_limit_rejections_total{limit="requests_per_minute",scope="key"} 1.0' in one
    assert 'kaset_batch_size_count{model="e5-small"} 1.0' in two and 'kaset_batch_size_count{' not in one


def test_dashboard_queries_only_existing_metrics(client: TestClient) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    assert len(exprs) >= 15
    queried = {name for expr in exprs for name in re.findall(r"\b(?:kaset|process)_[a-z0-9_]+\b", expr)}
    names = metric_names(client.get("/metrics").text)
    suffixes = ("_bucket", "_sum", "_count", "_total")
    missing = [name for name in sorted(queried)
               if name not in names and not any(name.endswith(s) and name[: -len(s)] in names for s in suffixes)]
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    titles = " ".join(panel.get("title", "") for panel in dashboard["panels"]).lower()
    for topic in ("requests/s", "p50", "overhead", "tokens/s", "audio", "in flight", "limit", "request-log"):
        assert topic in titles, topic
