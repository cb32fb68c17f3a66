"""The remote model handle: a model on a kaset worker, called through the worker's internal task
API (kaset.workers.wire) over the pool's one aiohttp session, on the event loop.

`WorkerModels` is what the router sees of the pool (`kaset.registry.handle.RemoteModels`): which
names some replica serves, a handle per call, and every model the replicas announce. A handle
picks the ready replica with the fewest calls outstanding each call.

Faults: a replica that cannot be reached, or
drops the connection before answering, gets a breaker failure, is marked not ready until its
next probe, and the call goes to another replica (a stream only while nothing of it has been
read); a draining replica's 503 moves the call on without a breaker failure. No replica left:
503 `worker_unavailable`, which a route treats like any unavailable model (its next fallback).
No byte for `KASET_WORKER_TIMEOUT_S`: 504. An error the worker answered (400 for a bad voice,
429 for a full queue, 503 for a model that failed to load) is re-raised here as the same error.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any

import aiohttp
import numpy as np

from kaset import tracing
from kaset.config import Settings
from kaset.errors import KasetError, ModelUnavailable, UpstreamTimeout
from kaset.ids import current_request_id
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.handle import Messages, ModelHandle, ModelInfo, PartMessages
from kaset.registry.inference_time import inference_seconds
from kaset.runtimes.base import (
    Embeddings,
    Generation,
    GenerationChunk,
    GenerationParams,
    Task,
    TranscribeOptions,
    Transcription,
)
from kaset.workers import wire
from kaset.workers.pool import Replica, WorkerPool

log = logging.getLogger("kaset.workers")


class WorkerUnavailable(ModelUnavailable):
    code = "worker_unavailable"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class WorkerLost(WorkerUnavailable):
    """The replica went away in the middle of a streamed reply (the part sent stands)."""

    code = "worker_lost"


class WorkerTimeout(UpstreamTimeout):
    code = "worker_timeout"


def lost(pool: WorkerPool, replica: Replica, exc: BaseException) -> None:
    """A replica that could not be reached or dropped a call: breaker failure, not ready until probed."""
    log.warning("worker %s lost: %s", replica.url, exc)
    replica.breaker.failed()
    replica.ready = False  # until its next readiness probe says otherwise
    pool.requests.labels(replica.url, "lost").inc()


class WorkerError(KasetError):
    """An error a worker answered, raised again here with its status, type, code and message,
    and whose fault it is: the `retryable` / `breaker_failure` of the worker's error class when
    its envelope carries them (`KasetError.envelope(faults=True)`), else what the status says
    (a 5xx the worker's, a 429 busy, a 4xx the caller's), so a client's bad input relayed by a
    worker never counts against a breaker."""

    def __init__(self, status: int, error: dict[str, Any], retry_after: float | None) -> None:
        super().__init__(str(error.get("message") or f"The worker answered {status}."),
                         param=error.get("param"), code=error.get("code"))
        self.status_code = status
        self.error_type = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
        self.retry_after = retry_after
        retryable, breaker_failure = KasetError.faults_of_status(status)
        said_retryable, said_breaker = error.get("retryable"), error.get("breaker_failure")
        self.retryable = said_retryable if isinstance(said_retryable, bool) else retryable
        self.breaker_failure = said_breaker if isinstance(said_breaker, bool) else breaker_failure

    @property
    def headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return None
        return {"Retry-After": str(max(1, -int(-self.retry_after // 1)))}


class WorkerModels:
    """The pool's models, as the router asks about them."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        # A model version's labels, voices and limits: asked once, they change only with its files.
        self.infos: dict[str, ModelInfo] = {}

    def serves(self, name: str) -> bool:
        return name in self.pool.models

    def ready(self, name: str) -> bool:
        return any(replica.ready for replica in self.pool.models.get(name, ()))

    def handle(self, name: str, spec: ModelSpec, task: Task) -> ModelHandle:
        return RemoteHandle(self, name, spec)

    def specs(self) -> Iterable[ModelSpec]:
        seen: dict[str, ModelSpec] = {}
        for replica in self.pool.replicas.values():
            if not replica.ready:
                continue
            for name in replica.models:
                spec = self.pool.catalog.get(name)
                if spec is not None:
                    seen[spec.key] = spec
        return seen.values()


class RemoteHandle(ModelHandle):
    remote = True

    def __init__(self, models: WorkerModels, name: str, spec: ModelSpec) -> None:
        self.models = models
        self.pool = models.pool
        self.name = name
        self.spec = spec
        self.url_path = f"{wire.PREFIX}/{spec.key}"

    # --- the handle ---------------------------------------------------------------------------

    async def info(self) -> ModelInfo:
        cached = self.models.infos.get(self.spec.key)
        if cached is None:
            cached = self.models.infos[self.spec.key] = wire.info_in(json.loads(await self._fetch("GET", "info")))
        return cached

    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcription:
        headers = {wire.OPTIONS_HEADER: json.dumps(dataclasses.asdict(options))}
        return wire.transcription_in(await self._json("transcribe", data=wire.pcm16_out(audio), headers=headers))

    async def synthesize(self, text: str, voice: str | None, speed: float) -> bytes:
        return await self._fetch("POST", "synthesize", json={"text": text, "voice": voice, "speed": speed})

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        answer = await self._json("translate", json={"texts": texts, "source": source, "target": target})
        return [str(t) for t in answer["texts"]]

    async def chat(self, messages: Messages, params: GenerationParams) -> Generation:
        return wire.generation_in(await self._json("chat", json={"messages": messages,
                                                                 "params": wire.params_out(params)}))

    def chat_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._chunks("chat_stream", {"messages": messages, "params": wire.params_out(params)})

    async def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return wire.generation_in(await self._json("complete", json={"prompt": prompt,
                                                                     "params": wire.params_out(params)}))

    def complete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._chunks("complete_stream", {"prompt": prompt, "params": wire.params_out(params)})

    async def chat_parts(self, messages: PartMessages, params: GenerationParams) -> Generation:
        return wire.generation_in(await self._json("chat_parts", json={"messages": messages,
                                                                       "params": wire.params_out(params)}))

    def chat_parts_stream(self, messages: PartMessages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._chunks("chat_parts_stream", {"messages": messages, "params": wire.params_out(params)})

    async def synthesize_stream(self, text: str, voice: str | None, speed: float) -> AsyncIterator[bytes]:
        # Raw PCM has no room for an error: a worker whose synthesis failed cuts the reply.
        body = {"text": text, "voice": voice, "speed": speed}
        async with aclosing(self._stream("synthesize_stream", body, lines=False)) as pieces:
            async for piece in pieces:
                yield piece

    async def embed(self, texts: list[str]) -> Embeddings:
        return wire.embeddings_in(await self._json("embed", json={"texts": texts}))

    async def embed_each(self, texts: list[str]) -> list[Embeddings]:
        return [wire.embeddings_in(item) for item in (await self._json("embed_each", json={"texts": texts}))["items"]]

    async def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
        body = {"images": [wire.array_out(np.asarray(image, dtype=np.uint8)) for image in images]}
        return [wire.array_in(a, "probabilities") for a in (await self._json("classify", json=body))["probabilities"]]

    async def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        body = {"image": base64.b64encode(image_jpeg).decode("ascii"), "prompt": prompt,
                "params": wire.params_out(params)}
        return wire.generation_in(await self._json("describe_image", json=body))

    # --- calls on the best replica ------------------------------------------------------------

    async def _chunks(self, what: str, body: dict[str, Any]) -> AsyncIterator[GenerationChunk]:
        """A generation streamed as one JSON object per line; an error line ends it."""
        # aclosing: the replica is released the moment this generator stops, not when collected.
        async with aclosing(self._stream(what, body, lines=True)) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                item = json.loads(line)
                if "error" in item:
                    raise WorkerError(int(item.get("status", 500)), item["error"], None)
                yield wire.chunk_in(item)

    async def _stream(self, what: str, body: dict[str, Any], *, lines: bool) -> AsyncGenerator[bytes, None]:
        """A streamed reply's lines, or its bytes as they arrive; a replica lost on the way is
        marked so and the stream ends with WorkerLost (what was sent stands)."""
        resp, replica, sent_at = await self._open(what, json=body)
        finished = False
        try:
            async for piece in (resp.content if lines else resp.content.iter_any()):
                yield piece
            finished = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            lost(self.pool, replica, exc)
            raise WorkerLost(f"The worker serving '{self.name}' was lost mid-reply "
                             f"({type(exc).__name__}); the reply is incomplete.") from exc
        finally:
            self._finish(resp, replica, sent_at, finished)

    def _finish(self, resp: aiohttp.ClientResponse, replica: Replica, sent_at: float, finished: bool) -> None:
        if finished:
            replica.breaker.succeeded()
            self.pool.requests.labels(replica.url, "ok").inc()
        self._done(replica, sent_at)
        resp.release()

    async def _json(self, what: str, **request: Any) -> Any:
        return json.loads(await self._fetch("POST", what, **request))

    async def _fetch(self, method: str, what: str, **request: Any) -> bytes:
        """The worker's whole successful reply; another replica when one is lost before it is read."""
        tried: list[Replica] = []
        while True:
            resp, replica, sent_at = await self._open(what, method=method, tried=tried, **request)
            try:
                body = await resp.read()
            except TimeoutError as exc:
                replica.breaker.failed()
                raise WorkerTimeout(f"The worker for '{self.name}' did not finish within "
                                    f"{self.pool.timeout_s:g} s.") from exc
            except aiohttp.ClientError as exc:
                lost(self.pool, replica, exc)
                continue
            finally:
                self._done(replica, sent_at)
                resp.release()
            replica.breaker.succeeded()
            self.pool.requests.labels(replica.url, "ok").inc()
            return body

    async def _open(self, what: str, *, method: str = "POST", tried: list[Replica] | None = None,
                    **request: Any) -> tuple[aiohttp.ClientResponse, Replica, float]:
        """A successful response's head, its replica (the call counted outstanding until `_done`)
        and when it was sent; errors the worker answered are raised as the same errors."""
        pool = self.pool
        assert pool.session is not None, "the worker pool is not started"
        headers = {**pool.headers(), **request.pop("headers", {})}
        request_id = current_request_id.get()
        if request_id:
            headers["x-request-id"] = request_id
        tracing.inject(headers)  # W3C traceparent of the current (model-call) span, when tracing is on
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(5.0, pool.timeout_s), sock_read=pool.timeout_s)
        url_path = f"{self.url_path}/{what}"
        tried = [] if tried is None else tried
        while True:
            replica = pool.pick(self.name, tried)
            if replica is None:
                raise WorkerUnavailable(
                    f"No worker replica of '{self.name}' could answer ({len(tried)} tried); retry shortly." if tried
                    else f"No worker replica of '{self.name}' is ready; retry shortly.")
            tried.append(replica)
            replica.outstanding += 1
            sent_at = time.perf_counter()
            try:
                resp = await pool.session.request(method, replica.url + url_path, headers=headers, timeout=timeout,
                                                  **request)
            except TimeoutError as exc:
                replica.breaker.failed()
                self._done(replica, sent_at)
                raise WorkerTimeout(f"The worker for '{self.name}' did not answer within {pool.timeout_s:g} s.") \
                    from exc
            except aiohttp.ClientError as exc:
                lost(pool, replica, exc)
                self._done(replica, sent_at)
                continue  # nothing was answered: the call may go to another replica
            except BaseException:
                self._done(replica, sent_at)  # cancelled: the replica proved nothing either way
                raise
            if resp.status < 400:
                return resp, replica, sent_at
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
                self._done(replica, sent_at)
            if resp.status == 503 and b"worker_draining" in body:
                replica.ready = False
                pool.requests.labels(replica.url, "draining").inc()
                continue
            raise self._error(resp, body, replica)

    @staticmethod
    def _done(replica: Replica, sent_at: float) -> None:
        replica.outstanding -= 1
        replica.breaker.released()  # a no-op once succeeded() or failed() said it; else frees a trial
        _count_inference(time.perf_counter() - sent_at)

    def _error(self, resp: aiohttp.ClientResponse, body: bytes, replica: Replica) -> KasetError:
        """The worker answered: it is alive (no replica breaker failure); the router's breaker of
        the model counts the model's own faults."""
        try:
            error = json.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        retry_after = resp.headers.get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after else None
        except ValueError:
            seconds = None
        self.pool.requests.labels(replica.url, "answered_error").inc()
        return WorkerError(resp.status, error if isinstance(error, dict) else {}, seconds)


def _count_inference(seconds: float) -> None:
    """The worker's time counts as inference: x-kaset-overhead-ms stays the gateway's own cost."""
    bucket = inference_seconds.get()
    if bucket is not None:
        bucket[0] += seconds


async def open_worker_models(settings: Settings,
                             catalog: Catalog) -> tuple[WorkerModels, Callable[[], Awaitable[None]]]:
    """The workers of `settings` (KASET_WORKER_URLS or the Redis registry) for a process other
    than the gateway (a Celery jobs worker): their models, and how to close the pool."""
    pool = WorkerPool(settings, catalog)
    await pool.start()
    return WorkerModels(pool), pool.close
