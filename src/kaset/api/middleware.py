"""Pure ASGI middleware (BaseHTTPMiddleware costs too much per request for a gateway)."""

from __future__ import annotations

import json
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaset.api.telemetry import Telemetry
from kaset.ids import current_request_id, new_id
from kaset.metrics import current_metrics
from kaset.quotas.enforcer import ADMISSION_SCOPE_KEY
from kaset.registry.inference_time import inference_seconds
from kaset.usage import RequestUsage, current_usage

REQUEST_ID_HEADER = "x-request-id"
OVERHEAD_HEADER = "x-kaset-overhead-ms"


class GatewayMiddleware:
    """Request ids, the gateway-overhead header, an early 413 for oversized bodies, and (with
    `telemetry`) the per-request usage context, metrics and request-log row."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, telemetry: Telemetry | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        started_at = time.time()
        request_id = ""
        content_length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        request_id = request_id or new_id()
        # Handlers read it from the scope (audit rows record it; see kaset.api.deps.request_id).
        scope["kaset.request_id"] = request_id
        current_request_id.set(request_id)
        telemetry = self.telemetry
        if content_length > self.max_body_bytes:
            await _send_too_large(send, content_length, self.max_body_bytes, request_id)
            if telemetry is not None:
                telemetry.finish(scope, request_id, started_at, time.perf_counter() - started, 0.0, 413, None,
                                 RequestUsage())
            return

        bucket = [0.0]
        token = inference_seconds.set(bucket)
        # What the response said, for the log and metrics (500 if it never started).
        status = 500
        model_header: str | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, model_header
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                overhead_ms = (time.perf_counter() - started - bucket[0]) * 1000
                headers.append(OVERHEAD_HEADER, f"{max(overhead_ms, 0.0):.3f}")
                status = message["status"]
                model_header = headers.get("x-kaset-model")
                admission = scope.get(ADMISSION_SCOPE_KEY)
                if admission is not None and admission.headers:
                    message["headers"] = [*message["headers"], *admission.headers]
            await send(message)

        if telemetry is None:
            try:
                await self.app(scope, receive, send_with_headers)
            finally:
                inference_seconds.reset(token)
                admission = scope.get(ADMISSION_SCOPE_KEY)
                if admission is not None:  # no usage is recorded without telemetry: slots only
                    await admission.enforcer.finish(admission, RequestUsage())
            return

        usage = RequestUsage()
        usage_token = current_usage.set(usage)
        metrics_token = current_metrics.set(telemetry.metrics)
        telemetry.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            inference_seconds.reset(token)
            current_usage.reset(usage_token)
            current_metrics.reset(metrics_token)
            telemetry.metrics.in_flight -= 1
            # After the last body byte: streamed responses have recorded their units by now.
            telemetry.finish(scope, request_id, started_at, time.perf_counter() - started, bucket[0], status,
                             model_header, usage)
            admission = scope.get(ADMISSION_SCOPE_KEY)
            if admission is not None:
                await admission.enforcer.finish(admission, usage)


async def _send_too_large(send: Send, size: int, limit: int, request_id: str) -> None:
    body = json.dumps({"error": {
        "message": f"The request body is {size} bytes; this server accepts at most {limit} bytes.",
        "type": "invalid_request_error", "param": None, "code": "payload_too_large",
    }}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER.encode(), request_id.encode()), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
