"""OpenTelemetry tracing (kaset.tracing): spans of the real gateway, traceparent to a real worker,
OTLP export to a local receiver, and nothing at all when tracing is off."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kaset.app import create_app
from kaset.config import Settings
from kaset.tracing import GATEWAY_SERVICE, TracingMiddleware, inject, install_tracing, model_call, setup
from tests.fixtures.fake_providers import FakeServer, openai_app, serve
from tests.fixtures.worker_process import worker_process

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello rice"}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TOKEN = "worker-secret-for-tracing-tests"
OTEL_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME",
            "OTEL_SDK_DISABLED")


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)


def _settings(data_dir: Path, models_dir: Path, **extra: Any) -> Settings:
    return Settings(data_dir=data_dir, models_dir=models_dir, redis_url=None, database_url=None, jwt_secret=None,
                    request_log=False, **{"models": ["echo"], **extra})


def _add_probe_routes(app: FastAPI) -> None:
    """Routes that show what code inside a request sees: the headers `inject` writes, a model
    span, a failure and a 503."""

    @app.get("/test/inject")
    async def injected() -> dict[str, str]:
        headers: dict[str, str] = {}
        inject(headers)
        return headers

    @app.get("/test/model-call")
    async def model() -> dict[str, bool]:
        with model_call("echo", "chat") as span:
            return {"recording": span is not None and span.is_recording()}

    @app.get("/test/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/test/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"error": "down"}, status_code=503)


def _ready(client: TestClient, announced: list[str]) -> TestClient:
    client.headers["Authorization"] = f"Bearer {announced[0]}"
    deadline = time.monotonic() + 30
    while (ready := client.get("/health/ready")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory,
           models_dir: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """The real gateway (echo model), traced into an in-memory exporter."""
    data_dir = tmp_path_factory.mktemp("tracing")
    announced: list[str] = []
    app = create_app(_settings(data_dir, models_dir), announce_key=announced.append)
    _add_probe_routes(app)
    exporter = InMemorySpanExporter()
    tracing = install_tracing(app, GATEWAY_SERVICE, exporter)
    assert tracing is not None and app.state.tracing is tracing
    with TestClient(app, raise_server_exceptions=False) as client:
        yield _ready(client, announced), exporter


@pytest.fixture
def spans(traced: tuple[TestClient, InMemorySpanExporter]) -> InMemorySpanExporter:
    exporter = traced[1]
    exporter.clear()
    return exporter


def _only(spans: InMemorySpanExporter | Sequence[ReadableSpan], name: str) -> ReadableSpan:
    finished = spans.get_finished_spans() if isinstance(spans, InMemorySpanExporter) else spans
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def _traceparent(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent header."""
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled (the SDK may set the random-id bit too)
    return trace_id, parent_id


def test_a_request_gets_a_server_span(traced: tuple[TestClient, InMemorySpanExporter],
                                      spans: InMemorySpanExporter) -> None:
    client = traced[0]
    response = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-me-1"})
    assert response.status_code == 200, response.text
    span = _only(spans, "POST /v1/chat/completions")
    assert span.kind == SpanKind.SERVER
    assert span.parent is None
    assert span.resource.attributes["service.name"] == "kaset-gateway"
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST", "url.path": "/v1/chat/completions", "http.route": "/v1/chat/completions",
        "http.response.status_code": 200, "kaset.request_id": "trace-me-1", "kaset.model": "echo"}
    assert span.status.status_code == StatusCode.UNSET
    # The span covers the whole request, the gateway's own middleware included.
    assert span.end_time is not None and span.start_time is not None and span.end_time > span.start_time


def test_an_incoming_traceparent_is_continued(traced: tuple[TestClient, InMemorySpanExporter],
                                              spans: InMemorySpanExporter) -> None:
    client = traced[0]
    response = client.get("/v1/models", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                                                 "tracestate": "vendor=value"})
    assert response.status_code == 200, response.text
    span = _only(spans, "GET /v1/models")
    assert trace.format_trace_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and span.parent.is_remote
    assert trace.format_span_id(span.parent.span_id) == PARENT_ID
    assert span.context.trace_state.get("vendor") == "value"
    # The request id the gateway made up is on the span as it is on the response.
    assert span.attributes is not None and span.attributes["kaset.request_id"] == response.headers["x-request-id"]


def test_inject_writes_the_current_request_span(traced: tuple[TestClient, InMemorySpanExporter],
                                                spans: InMemorySpanExporter) -> None:
    client = traced[0]
    injected = client.get("/test/inject", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).json()
    span = _only(spans, "GET /test/inject")
    version, trace_id, parent_id, flags = injected["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    assert trace_id == TRACE_ID
    assert parent_id == trace.format_span_id(span.context.span_id)  # the callee's parent: our span


def test_a_model_call_is_a_child_span(traced: tuple[TestClient, InMemorySpanExporter],
                                      spans: InMemorySpanExporter) -> None:
    assert traced[0].get("/test/model-call").json() == {"recording": True}
    server = _only(spans, "GET /test/model-call")
    call = _only(spans, "chat echo")
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    assert call.context.trace_id == server.context.trace_id
    assert dict(call.attributes or {}) == {"kaset.model": "echo", "kaset.operation": "chat"}


def test_the_router_opens_a_span_per_model_call(traced: tuple[TestClient, InMemorySpanExporter],
                                                spans: InMemorySpanExporter) -> None:
    assert traced[0].post("/v1/chat/completions", json=CHAT).status_code == 200
    server = _only(spans, "POST /v1/chat/completions")
    call = _only(spans, "chat echo")
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    assert dict(call.attributes or {}) == {"kaset.model": "echo", "kaset.operation": "chat", "kaset.remote": False,
                                           "kaset.outcome": "ok"}
    assert call.status.status_code == StatusCode.UNSET and call.events == ()


def test_server_errors_mark_the_span(traced: tuple[TestClient, InMemorySpanExporter],
                                     spans: InMemorySpanExporter) -> None:
    client = traced[0]
    assert client.get("/test/boom").status_code == 500
    failed = _only(spans, "GET /test/boom")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["http.response.status_code"] == 500
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "RuntimeError"

    assert client.get("/test/unavailable").status_code == 503
    refused = _only(spans, "GET /test/unavailable")
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.attributes is not None and refused.attributes["error.type"] == "503"

    # A client error is not the server's: no error status; no route matched, so no template.
    assert client.get("/no/such/path").status_code == 404
    missing = _only(spans, "GET")
    assert missing.status.status_code == StatusCode.UNSET
    assert missing.attributes is not None and "http.route" not in missing.attributes
    assert missing.attributes["http.response.status_code"] == 404


def test_off_without_the_environment(tmp_path: Path, models_dir: Path) -> None:
    announced: list[str] = []
    app = create_app(_settings(tmp_path, models_dir), announce_key=announced.append)
    _add_probe_routes(app)
    assert app.state.tracing is None
    assert all(m.cls is not TracingMiddleware for m in app.user_middleware)
    with TestClient(app, raise_server_exceptions=False) as client:
        _ready(client, announced)
        traceparent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=traceparent).status_code == 200
        # Inside a request, nothing is current: nothing to inject, model spans are no-ops.
        assert client.get("/test/inject", headers=traceparent).json() == {}
        assert client.get("/test/model-call").json() == {"recording": False}
    # And nothing was installed process-wide either.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_otel_sdk_disabled_wins_over_the_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  models_dir: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert create_app(_settings(tmp_path, models_dir)).state.tracing is None


# --- provider models: a span per attempt, traceparent to the upstream ----------------------

PROVIDER_KEY = "sk-tracing-provider-key-12"
PROVIDER_KEY_ENV = "KASET_TEST_TRACING_PROVIDER_KEY"


@dataclass
class ProviderGateway:
    client: TestClient
    spans: InMemorySpanExporter
    ok: FakeServer
    broken: FakeServer


@pytest.fixture(scope="module")
def provider_gateway(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ProviderGateway]:
    """The real gateway, traced, with two OpenAI-compatible provider models on local servers that
    implement OpenAI's API (one answering 500), and a route from the broken one to the other."""
    folder = tmp_path_factory.mktemp("tracing-catalog")
    with pytest.MonkeyPatch.context() as patch, serve(openai_app(PROVIDER_KEY)) as ok, \
            serve(openai_app(PROVIDER_KEY)) as broken:
        patch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
        broken.fail(500)
        common = "license: test, source: {kind: builtin}, max_concurrent: 4"
        params = f"model: gpt-fake, api_key_env: {PROVIDER_KEY_ENV}"
        (folder / "providers.yaml").write_text(f"""
models:
  - {{id: prov-ok, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{ok.base_url}/v1", {params}}}}}
  - {{id: prov-broken, tasks: [chat], runtime: openai-compatible, {common},
     params: {{base_url: "{broken.base_url}/v1", {params}}}}}
routes:
  - {{name: chat-with-fallback, targets: [{{model: prov-broken}}], fallbacks: [prov-ok]}}
""")
        announced: list[str] = []
        app = create_app(_settings(tmp_path_factory.mktemp("tracing-providers"), models_dir, catalog_dirs=[folder]),
                         announce_key=announced.append)
        exporter = InMemorySpanExporter()
        install_tracing(app, GATEWAY_SERVICE, exporter)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield ProviderGateway(_ready(client, announced), exporter, ok, broken)


def _provider_chat(gateway: ProviderGateway, model: str) -> Any:
    gateway.spans.clear()
    return gateway.client.post("/v1/chat/completions", json={**CHAT, "model": model, "max_tokens": 8})


def test_traceparent_reaches_a_provider(provider_gateway: ProviderGateway) -> None:
    response = _provider_chat(provider_gateway, "prov-ok")
    assert response.status_code == 200, response.text
    server = _only(provider_gateway.spans, "POST /v1/chat/completions")
    call = _only(provider_gateway.spans, "chat prov-ok")
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    assert dict(call.attributes or {}) == {"kaset.model": "prov-ok", "kaset.operation": "chat",
                                           "kaset.remote": False, "kaset.outcome": "ok"}
    # The upstream's parent is the model call: the provider's own trace hangs under it.
    sent = provider_gateway.ok.requests[-1]["headers"]
    assert _traceparent(sent) == (trace.format_trace_id(server.context.trace_id),
                                  trace.format_span_id(call.context.span_id))


def test_a_fallback_is_a_span_per_attempt(provider_gateway: ProviderGateway) -> None:
    response = _provider_chat(provider_gateway, "chat-with-fallback")
    assert response.status_code == 200, response.text
    assert response.headers["x-kaset-model"] == "prov-ok"
    server = _only(provider_gateway.spans, "POST /v1/chat/completions")
    failed = _only(provider_gateway.spans, "chat prov-broken")
    served = _only(provider_gateway.spans, "chat prov-ok")
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in (failed, served))
    assert dict(failed.attributes or {}) == {"kaset.model": "prov-broken", "kaset.operation": "chat",
                                             "kaset.route": "chat-with-fallback", "kaset.remote": False,
                                             "kaset.outcome": "error", "error.type": "UpstreamError"}
    assert failed.status.status_code == StatusCode.ERROR and [e.name for e in failed.events] == ["exception"]
    assert served.attributes is not None and served.attributes["kaset.outcome"] == "ok"
    assert served.attributes["kaset.route"] == "chat-with-fallback"
    assert failed.end_time is not None and served.start_time is not None and failed.end_time <= served.start_time
    # Each upstream saw its own attempt's span as the parent.
    assert _traceparent(provider_gateway.broken.requests[-1]["headers"])[1] == trace.format_span_id(
        failed.context.span_id)
    assert _traceparent(provider_gateway.ok.requests[-1]["headers"])[1] == trace.format_span_id(
        served.context.span_id)


def test_the_callers_own_error_is_no_span_error(provider_gateway: ProviderGateway) -> None:
    provider_gateway.ok.fail(400, times=1)  # the provider refuses the request's content
    response = _provider_chat(provider_gateway, "prov-ok")
    assert response.status_code == 400, response.text
    call = _only(provider_gateway.spans, "chat prov-ok")
    assert call.attributes is not None and call.attributes["kaset.outcome"] == "caller_error"
    assert call.attributes["error.type"] == "InvalidRequest"
    assert call.status.status_code == StatusCode.UNSET and call.events == ()


# --- OTLP over HTTP, to a receiver in this process ----------------------------------------------


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: decodes each protobuf export into flat span dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.content_types: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                receiver.content_types.add(f"{self.path} {self.headers['content-type']}")
                for resource_spans in export.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append({
                                "service": resource.get("service.name"), "name": span.name,
                                "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": {a.key: a.value for a in span.attributes}})
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, name: str, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s["name"] == name]
            if found:
                return found[-1]
            time.sleep(0.05)
        pytest.fail(f"no span {name!r} arrived: {sorted({s['name'] for s in self.spans})}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    try:
        yield otlp
    finally:
        otlp.close()


def test_the_environment_turns_on_otlp_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_dir: Path,
                                              receiver: OtlpReceiver) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "kaset-tracing-test")
    announced: list[str] = []
    app = create_app(_settings(tmp_path, models_dir), announce_key=announced.append)
    assert app.state.tracing is not None
    with TestClient(app) as client:
        _ready(client, announced)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    # Leaving the lifespan flushed the batch: no waiting on the export interval.
    span = next(s for s in receiver.spans if s["name"] == "POST /v1/chat/completions")
    assert span["service"] == "kaset-tracing-test"
    assert span["attributes"]["kaset.model"].string_value == "echo"
    assert span["attributes"]["http.response.status_code"].int_value == 200
    assert receiver.content_types == {"/v1/traces application/x-protobuf"}


def test_a_collector_that_is_down_holds_shutdown_only_for_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        tracing = setup(GATEWAY_SERVICE)
        assert tracing is not None
        tracing.tracer.start_span("lost").end()
        started = time.monotonic()
        tracing.shutdown(grace_s=0.5)  # the exporter alone would retry for its 10 s timeout
        assert time.monotonic() - started < 3


@dataclass
class WorkerHop:
    gateway: list[ReadableSpan]
    worker: list[dict[str, Any]]


@pytest.fixture(scope="module")
def worker_hop(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[WorkerHop]:
    """One chat call through the gateway (in-memory spans) to echo on a real `kaset worker`
    process (OTLP to a local receiver): both sides' spans."""
    tmp_path = tmp_path_factory.mktemp("worker-hop")
    receiver = OtlpReceiver()
    env = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN,
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    try:
        with worker_process(tmp_path, "echo", env) as worker:
            announced: list[str] = []
            (tmp_path / "gw").mkdir()
            app = create_app(_settings(tmp_path / "gw", models_dir, models=[], worker_urls=[worker.url],
                                       worker_token=TOKEN, worker_poll_interval_s=0.2),
                             announce_key=announced.append)
            exporter = InMemorySpanExporter()
            install_tracing(app, GATEWAY_SERVICE, exporter)
            with TestClient(app) as client:
                _ready(client, announced)
                deadline = time.monotonic() + 20
                while f'kaset_worker_replica_ready{{replica="{worker.url}"}} 1.0' not in client.get("/metrics").text:
                    assert time.monotonic() < deadline, "the gateway never saw the worker ready"
                    time.sleep(0.1)
                exporter.clear()
                receiver.spans.clear()
                response = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "hop-1"})
                assert response.status_code == 200, response.text
            receiver.wait_for(WORKER_TASK_SPAN)
            yield WorkerHop(list(exporter.get_finished_spans()), list(receiver.spans))
    finally:
        receiver.close()


WORKER_TASK_SPAN = "POST /internal/v1/models/{name}/{method}"


def test_a_call_to_a_worker_model_is_a_remote_model_span(worker_hop: WorkerHop) -> None:
    gateway_span = _only(worker_hop.gateway, "POST /v1/chat/completions")
    call = _only(worker_hop.gateway, "chat echo")
    assert call.parent is not None and call.parent.span_id == gateway_span.context.span_id
    assert dict(call.attributes or {}) == {"kaset.model": "echo", "kaset.operation": "chat", "kaset.remote": True,
                                           "kaset.outcome": "ok"}
    assert gateway_span.attributes is not None and gateway_span.attributes["kaset.model"] == "echo"
    worker_span = next(s for s in worker_hop.worker if s["name"] == WORKER_TASK_SPAN)
    assert worker_span["service"] == "kaset-worker"


def test_traceparent_reaches_a_real_worker(worker_hop: WorkerHop) -> None:
    """The worker's span is the child of the gateway's model-call span, in the same trace."""
    call = _only(worker_hop.gateway, "chat echo")
    worker_span = next(s for s in worker_hop.worker if s["name"] == WORKER_TASK_SPAN)
    assert worker_span["trace_id"] == trace.format_trace_id(call.context.trace_id)
    assert worker_span["parent_span_id"] == trace.format_span_id(call.context.span_id)
    assert worker_span["attributes"]["kaset.request_id"].string_value == "hop-1"
