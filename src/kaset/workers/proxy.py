"""Forwarding a gateway request to a worker replica, streaming the reply back.

The gateway has already authenticated the caller and admitted it under its limits; the worker
gets the same method, path, query and body, the worker token instead of the caller's key, and
the request id. JSON replies are read whole (so a replica dying mid-reply can be retried);
everything else (SSE, audio) is streamed through chunk by chunk as it arrives.

Faults: a replica that cannot be reached or drops the connection gets a breaker failure and is
marked not ready until its next probe; the call moves to another replica unless it is a
streamed one (then 503, or an in-band SSE error once the stream has begun). No byte for
`KASET_WORKER_TIMEOUT_S` gives 504. Nothing waits forever.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from kaset.errors import ModelUnavailable, UpstreamTimeout
from kaset.registry.manager import inference_seconds
from kaset.tracing import inject
from kaset.usage import record
from kaset.workers.pool import Replica, WorkerPool

log = logging.getLogger("kaset.workers")

# Not passed on to the worker (hop-by-hop, the caller's credentials, recomputed ones).
_DROP_REQUEST = frozenset({"host", "authorization", "content-length", "connection", "keep-alive",
                           "transfer-encoding", "te", "upgrade", "proxy-authorization", "expect"})
# Not passed back: hop-by-hop, and the ones the gateway's middleware sets itself.
_DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server",
                            "x-request-id", "x-kaset-overhead-ms", "x-kaset-usage"})


class WorkerUnavailable(ModelUnavailable):
    code = "worker_unavailable"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class WorkerTimeout(UpstreamTimeout):
    code = "worker_timeout"


class Forwarded(Exception):
    """Raised from the auth dependency with the worker's response; its handler returns it."""

    def __init__(self, response: Response) -> None:
        super().__init__("forwarded to a worker")
        self.response = response


async def forwarded_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forwarded)
    return exc.response


BodyFactory = Callable[[], Any]


async def _body(request: Request) -> tuple[BodyFactory, bool, bool]:
    """(a factory of the body to send, whether the call is streamed, whether it is multipart)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        fields: list[tuple[str, Any, str | None, str | None]] = []
        streamed = False
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                await value.seek(0)
                fields.append((key, await value.read(), value.filename, value.content_type))
            else:
                fields.append((key, value, None, None))
                streamed = streamed or (key == "stream" and str(value).lower() in ("true", "1"))

        def make_form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            for name, content, filename, ctype in fields:
                if filename is None:
                    data.add_field(name, content)
                else:
                    data.add_field(name, content, filename=filename, content_type=ctype)
            return data

        return make_form, streamed, True
    raw = await request.body()
    streamed = False
    if b'"stream"' in raw:
        try:
            parsed = json.loads(raw)
            streamed = isinstance(parsed, dict) and parsed.get("stream") is True
        except ValueError:
            pass
    return (lambda: raw), streamed, False


async def forward(request: Request, pool: WorkerPool, names: list[str]) -> None:
    """Raise `Forwarded` with a worker's response when a requested model is served by workers."""
    name = next((n for n in names if n in pool.models), None)
    if name is None:
        return
    raise Forwarded(await _forward(request, pool, name))


async def _forward(request: Request, pool: WorkerPool, name: str) -> Response:
    assert pool.session is not None
    make_body, streamed, multipart = await _body(request)
    headers = {k: v for k, v in request.headers.items() if k not in _DROP_REQUEST}
    if multipart:
        headers.pop("content-type", None)  # aiohttp writes it with its own boundary
    headers.update(pool.headers())
    rid = request.scope.get("kaset.request_id")
    if rid:
        headers["x-request-id"] = str(rid)
    inject(headers)  # W3C traceparent of this request's span, when tracing is on
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(5.0, pool.timeout_s), sock_read=pool.timeout_s)
    tried: list[Replica] = []
    while True:
        replica = pool.pick(name, tried)
        if replica is None:
            if tried:
                raise WorkerUnavailable(f"No worker replica of '{name}' could answer ({len(tried)} tried); "
                                        "retry shortly.")
            raise WorkerUnavailable(f"No worker replica of '{name}' is ready; retry shortly.")
        tried.append(replica)
        replica.outstanding += 1
        release = True
        sent_at = time.perf_counter()
        try:
            resp = await pool.session.request(request.method, replica.url + path, headers=headers,
                                              data=make_body(), timeout=timeout)
        except TimeoutError as exc:
            replica.outstanding -= 1
            replica.breaker.failed()
            pool.requests.labels(replica.url, "timeout").inc()
            raise WorkerTimeout(f"The worker for '{name}' did not answer within {pool.timeout_s:g} s.") from exc
        except aiohttp.ClientError as exc:
            replica.outstanding -= 1
            lost(pool, replica, exc)
            # Not even connected: the worker never saw the call, so any call may go elsewhere.
            if streamed and not isinstance(exc, aiohttp.ClientConnectorError):
                raise WorkerUnavailable(f"The worker for '{name}' was lost before answering; the streamed call "
                                        "was not retried.") from exc
            continue
        except BaseException:
            # Cancelled (client gone, shutdown): the replica proved nothing either way.
            replica.outstanding -= 1
            replica.breaker.released()
            raise
        try:
            if resp.status == 503 and resp.headers.get("Retry-After") and not streamed:
                # A draining or overloaded replica refused before doing any work: try another.
                body = await resp.read()
                if b"worker_draining" in body:
                    replica.breaker.released()
                    replica.ready = False
                    pool.requests.labels(replica.url, "draining").inc()
                    continue
                return _buffered(resp, body, pool, replica)
            content_type = resp.headers.get("content-type", "")
            if not streamed and content_type.startswith("application/json"):
                try:
                    body = await resp.read()
                except TimeoutError as exc:
                    replica.breaker.failed()
                    pool.requests.labels(replica.url, "timeout").inc()
                    raise WorkerTimeout(f"The worker for '{name}' did not finish within {pool.timeout_s:g} s.") \
                        from exc
                except aiohttp.ClientError as exc:
                    lost(pool, replica, exc)
                    continue
                _account(resp, time.perf_counter() - sent_at)
                return _buffered(resp, body, pool, replica)
            _account(resp, time.perf_counter() - sent_at)
            release = False
            return StreamingResponse(_stream(resp, pool, replica, content_type.startswith("text/event-stream")),
                                     status_code=resp.status, headers=_response_headers(resp))
        finally:
            if release:
                replica.outstanding -= 1
                replica.breaker.released()  # a no-op once succeeded() or failed() said it; else frees a trial
                resp.release()


def lost(pool: WorkerPool, replica: Replica, exc: BaseException) -> None:
    """A replica that could not be reached or dropped a call: breaker failure, not ready until probed."""
    log.warning("worker %s lost: %s", replica.url, exc)
    replica.breaker.failed()
    replica.ready = False  # until its next readiness probe says otherwise
    pool.requests.labels(replica.url, "lost").inc()


def _account(resp: aiohttp.ClientResponse, waited_s: float) -> None:
    """The worker's time counts as inference (x-kaset-overhead-ms stays the gateway's own cost),
    and its reported usage as this request's (limits, budgets, the request log)."""
    bucket = inference_seconds.get()
    if bucket is not None:
        bucket[0] += waited_s
    header = resp.headers.get("x-kaset-usage")
    if header:
        _record(header)


def _record(units_json: str | bytes) -> None:
    try:
        units = json.loads(units_json)
        record(prompt_tokens=int(units.get("prompt_tokens", 0)),
               completion_tokens=int(units.get("completion_tokens", 0)),
               audio_seconds=float(units.get("audio_seconds", 0.0)), images=int(units.get("images", 0)),
               characters=int(units.get("characters", 0)))
    except (ValueError, TypeError, AttributeError):
        log.warning("worker sent malformed usage: %.100r", units_json)


_SSE_USAGE = b": x-kaset-usage "


def _take_usage(chunk: bytes) -> bytes:
    """Record and strip the worker's `: x-kaset-usage {...}` SSE comment from a chunk."""
    start = chunk.find(_SSE_USAGE)
    end = chunk.find(b"\n\n", start)
    if end < 0:
        return chunk  # split across chunks (unlikely): the client sees an SSE comment, no harm
    _record(chunk[start + len(_SSE_USAGE):end])
    return chunk[:start] + chunk[end + 2:]


def _response_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}


def _buffered(resp: aiohttp.ClientResponse, body: bytes, pool: WorkerPool, replica: Replica) -> Response:
    replica.breaker.succeeded()
    pool.requests.labels(replica.url, "ok").inc()
    return Response(body, status_code=resp.status, headers=_response_headers(resp))


async def _stream(resp: aiohttp.ClientResponse, pool: WorkerPool, replica: Replica, sse: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            if sse and _SSE_USAGE in chunk:
                chunk = _take_usage(chunk)
                if not chunk:
                    continue
            yield chunk
        replica.breaker.succeeded()
        pool.requests.labels(replica.url, "ok").inc()
    except (aiohttp.ClientError, TimeoutError) as exc:
        lost(pool, replica, exc)
        if not sse:
            raise  # the client sees a cut connection, not a silently short file
        error = {"error": {"message": "The worker serving this stream was lost; the reply is incomplete.",
                           "type": "server_error", "param": None, "code": "worker_lost"}}
        yield f"data: {json.dumps(error)}\n\n".encode()
    finally:
        replica.outstanding -= 1
        replica.breaker.released()
        resp.release()
