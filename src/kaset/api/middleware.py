"""Pure ASGI middleware (BaseHTTPMiddleware costs too much per request for a gateway)."""

from __future__ import annotations

import json
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaset.ids import new_id
from kaset.registry.manager import inference_seconds

REQUEST_ID_HEADER = "x-request-id"
OVERHEAD_HEADER = "x-kaset-overhead-ms"


class GatewayMiddleware:
    """Request ids, the gateway-overhead header, and an early 413 for oversized bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        content_length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        request_id = request_id or new_id()
        if content_length > self.max_body_bytes:
            await _send_too_large(send, content_length, self.max_body_bytes, request_id)
            return

        bucket = [0.0]
        token = inference_seconds.set(bucket)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                overhead_ms = (time.perf_counter() - started - bucket[0]) * 1000
                headers.append(OVERHEAD_HEADER, f"{max(overhead_ms, 0.0):.3f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            inference_seconds.reset(token)


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
