"""Prometheus metrics, one registry per app (no global state: two apps in one process, as in
the tests, never share counts).

Why not prometheus-client's Counter/Histogram objects on the request path: each `.labels()`
lookup and each `observe()` takes a lock and walks the buckets in Python, several µs a request
in a gateway whose whole overhead budget is a fraction of a millisecond. Requests are counted
on the event loop thread into plain dicts and lists here (a dict lookup and a bisect), and a
collector turns them into metric families only when /metrics is scraped. Everything is
touched from the event loop thread only, so no locks are needed.

Other parts of Kaset count through this module too:

* rate limits and queues: `record_limit_rejection("requests_per_minute")`, or
  `metrics.limit_rejected(...)` outside a request;
* dynamic batching: `record_batch_size(model_id, size)` / `metrics.batch_size(...)`;
* the model lifecycle: the `ModelManager` is handed the app's `Metrics` as its observer
  (`kaset.registry.lifecycle.LifecycleObserver`): loads, unloads, batch sizes, full queues.
"""

from __future__ import annotations

import contextvars
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kaset.store.request_log import RequestLog
    from kaset.usage import RequestUsage

# Whole-request and inference times: from a 1 ms echo to a minutes-long transcription.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The gateway's own time: the target is well under 1 ms, so the resolution is there.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The kaset_breaker_state gauge's values.
BREAKER_GAUGE_VALUES = {"closed": 0, "open": 1, "half_open": 2}

# Set by the gateway middleware for each request so code deep in a request (limits, queues)
# can count without being handed the app.
current_metrics: contextvars.ContextVar[Metrics | None] = contextvars.ContextVar("current_metrics", default=None)


class _Histogram:
    """Bucket counts without the cumulative sums (those are made at scrape time)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left gives the first bound >= value: Prometheus' `le` semantics.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_float_label(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _float_label(value: float) -> str:
    return repr(float(value))


# What the collector reads at scrape time. The registry implements these (kaset.registry.manager's
# ModelManager, kaset.registry.loaded_model's LoadedModel, kaset.registry.routing's Router); the
# registry imports this module to count, so this module names only what it reads, never the registry.


class _SpecView(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def max_concurrent(self) -> int: ...


class _LoadedModelView(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> _SpecView: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def max_queue(self) -> int: ...

    @property
    def memory_bytes(self) -> int: ...


class _PolicyView(Protocol):
    @property
    def memory_budget_bytes(self) -> int: ...


class ModelsView(Protocol):
    """The loaded models, as /metrics shows them (kaset.registry.manager.ModelManager)."""

    @property
    def policy(self) -> _PolicyView: ...

    def loaded(self) -> Sequence[_LoadedModelView]: ...


class BreakersView(Protocol):
    """Each upstream's circuit breaker state: closed, open or half_open (kaset.registry.routing.Router)."""

    def breaker_states(self) -> Iterable[tuple[str, str]]: ...


class Metrics:
    """Counts for one app. `observe_request` runs once per request, on the event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # Set in the app's lifespan once they exist.
        self.models: ModelsView | None = None
        self.request_log: RequestLog | None = None
        # Routing (kaset.registry.routing): breaker states are read from it at scrape time.
        self.router: BreakersView | None = None
        self._fallbacks: dict[tuple[str, str, str, str], int] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self.in_flight = 0
        # Set by kaset.quotas while its shared (Redis) storage is unreachable.
        self.limits_degraded = False
        self._requests: dict[tuple[str, str, int], int] = {}
        self._duration: dict[str, _Histogram] = {}
        self._overhead: dict[str, _Histogram] = {}
        self._inference: dict[str, _Histogram] = {}
        # model -> [prompt tokens, completion tokens, audio seconds, images, characters]
        self._units: dict[str, list[float]] = {}
        self._limit_rejections: dict[tuple[str, str], int] = {}
        self._batches: dict[str, _Histogram] = {}
        # (model, reason) -> count; reasons in kaset.registry.lifecycle.LOAD_REASONS / UNLOAD_REASONS.
        self._model_loads: dict[tuple[str, str], int] = {}
        self._model_unloads: dict[tuple[str, str], int] = {}
        self.registry.register(_KasetCollector(self))
        # Process RSS, CPU seconds, open files: read from /proc at scrape time only.
        ProcessCollector(registry=self.registry)

    # --- the request path ------------------------------------------------------------------

    def observe_request(self, route: str, model: str, status: int, duration_s: float, overhead_s: float,
                        inference_s: float, usage: RequestUsage | None) -> None:
        key = (route, model, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._duration.get(route)
        if hist is None:
            hist = self._duration[route] = _Histogram(LATENCY_BUCKETS)
            self._overhead[route] = _Histogram(OVERHEAD_BUCKETS)
        hist.observe(duration_s)
        self._overhead[route].observe(overhead_s)
        if inference_s > 0.0:
            inf = self._inference.get(model)
            if inf is None:
                inf = self._inference[model] = _Histogram(LATENCY_BUCKETS)
            inf.observe(inference_s)
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens or usage.audio_seconds
                                  or usage.images or usage.characters):
            units = self._units.get(model)
            if units is None:
                units = self._units[model] = [0, 0, 0.0, 0, 0]
            units[0] += usage.prompt_tokens
            units[1] += usage.completion_tokens
            units[2] += usage.audio_seconds
            units[3] += usage.images
            units[4] += usage.characters

    # --- counted by other parts of Kaset ----------------------------------------------------

    def limit_rejected(self, limit: str, scope: str = "key") -> None:
        """A request refused by a limit: `limit` names it (requests_per_minute, concurrency,
        tokens_per_day, audio_seconds_per_day, images_per_day, model_queue_full, ...), `scope`
        says whose budget ran out (key, user, model)."""
        key = (limit, scope)
        self._limit_rejections[key] = self._limit_rejections.get(key, 0) + 1

    def batch_size(self, model: str, size: int) -> None:
        """One model call of a dynamically batched model, holding `size` items."""
        hist = self._batches.get(model)
        if hist is None:
            hist = self._batches[model] = _Histogram(BATCH_BUCKETS)
        hist.observe(size)

    def model_loaded(self, model: str, reason: str, seconds: float) -> None:
        """A model finished loading: at startup, on a request's demand, or by an admin."""
        key = (model, reason)
        self._model_loads[key] = self._model_loads.get(key, 0) + 1

    def model_unloaded(self, model: str, reason: str) -> None:
        """A model was unloaded: idle, lru (evicted for room), admin, or budget (too big)."""
        key = (model, reason)
        self._model_unloads[key] = self._model_unloads.get(key, 0) + 1

    def fallback(self, route: str, from_model: str, to_model: str, reason: str) -> None:
        """A routed call moved from one model to the next (`to_model` "none": none was left)."""
        key = (route, from_model, to_model, reason)
        self._fallbacks[key] = self._fallbacks.get(key, 0) + 1

    def retry(self, model: str, reason: str) -> None:
        """A routed idempotent call is tried again on the same model."""
        key = (model, reason)
        self._retries[key] = self._retries.get(key, 0) + 1


def record_limit_rejection(limit: str, scope: str = "key") -> None:
    """Count a limit rejection for the app serving the current request (no-op outside one)."""
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.limit_rejected(limit, scope)


def record_batch_size(model: str, size: int) -> None:
    """Count a batch for the app serving the current request (no-op outside one)."""
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.batch_size(model, size)


class VoiceSessions(Collector):
    """Open /v1/voice/stream sessions of one app, as the `kaset_voice_sessions` gauge. The voice
    router creates it on the first session and registers it with the app's registry, so the
    gauge appears once voice has been used."""

    def __init__(self) -> None:
        self.open = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("kaset_voice_sessions", "Open /v1/voice/stream WebSocket sessions.",
                                value=self.open)


class _KasetCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        requests = CounterMetricFamily("kaset_requests", "HTTP requests by route template, model and status.",
                                       labels=["route", "model", "status"])
        for (route, model, status), count in m._requests.items():
            requests.add_metric([route, model, str(status)], count)
        yield requests
        yield _histograms("kaset_request_duration_seconds", "Whole request time, first byte in to last byte out.",
                          "route", m._duration)
        yield _histograms("kaset_gateway_overhead_seconds", "Request time not spent inside a model: the gateway's "
                          "own cost (the x-kaset-overhead-ms header).", "route", m._overhead)
        yield _histograms("kaset_inference_seconds", "Time inside the model per request.", "model", m._inference)
        yield _histograms("kaset_batch_size", "Items per model call of dynamically batched models.", "model",
                          m._batches)
        yield GaugeMetricFamily("kaset_requests_in_flight", "HTTP requests being served now.", value=m.in_flight)
        yield from _unit_families(m._units)
        rejections = CounterMetricFamily("kaset_limit_rejections", "Requests refused by a rate limit, quota or "
                                         "full model queue.", labels=["limit", "scope"])
        for (limit, scope), count in m._limit_rejections.items():
            rejections.add_metric([limit, scope], count)
        yield rejections
        yield GaugeMetricFamily("kaset_limits_storage_degraded", "1 while the shared rate-limit storage (Redis) is "
                                "unreachable and limits are enforced per replica (or requests refused).",
                                value=int(m.limits_degraded))
        yield from _model_families(m)
        yield from _routing_families(m)
        yield from _request_log_families(m.request_log)


def _histograms(name: str, documentation: str, label: str, hists: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, hist in hists.items():
        family.add_metric([value], hist.buckets(), hist.total)
    return family


def _unit_families(units: dict[str, list[float]]) -> Iterable[Metric]:
    tokens = CounterMetricFamily("kaset_tokens", "Tokens processed, by model and kind (prompt, completion).",
                                 labels=["model", "kind"])
    audio = CounterMetricFamily("kaset_audio_seconds", "Seconds of audio transcribed or synthesised.",
                                labels=["model"])
    images = CounterMetricFamily("kaset_images", "Images classified or described.", labels=["model"])
    characters = CounterMetricFamily("kaset_characters", "Characters of text synthesised or translated.",
                                     labels=["model"])
    # Only the units a model has used: an embedder gets no audio or image series.
    for model, (prompt, completion, seconds, count, chars) in units.items():
        if prompt or completion:
            tokens.add_metric([model, "prompt"], prompt)
            tokens.add_metric([model, "completion"], completion)
        if seconds:
            audio.add_metric([model], seconds)
        if count:
            images.add_metric([model], count)
        if chars:
            characters.add_metric([model], chars)
    return (tokens, audio, images, characters)


def _model_families(m: Metrics) -> Iterable[Metric]:
    loaded = m.models.loaded() if m.models is not None else []
    count = GaugeMetricFamily("kaset_models_loaded", "Models loaded in this process.", value=len(loaded))
    in_flight = GaugeMetricFamily("kaset_model_in_flight", "Calls running in or waiting for a model (executor "
                                  "or dynamic batcher).", labels=["model"])
    queued = GaugeMetricFamily("kaset_model_queue_depth", "Calls (requests, for batched models) waiting beyond "
                               "what a model's running calls hold.", labels=["model"])
    max_queue = GaugeMetricFamily("kaset_model_max_queue", "Calls that may wait for a model; more get 429.",
                                  labels=["model"])
    slots = GaugeMetricFamily("kaset_model_max_concurrent", "Calls a model runs at once.", labels=["model"])
    memory = GaugeMetricFamily("kaset_model_memory_estimate_bytes", "Memory a loaded model took, measured at load: "
                               "the process's RSS growth while it loaded, or its files' size if larger.",
                               labels=["model"])
    # Labelled by the name clients use: the id, or id@version for a non-preferred version.
    for model in loaded:
        name = model.name or model.spec.id
        in_flight.add_metric([name], model.in_flight)
        queued.add_metric([name], model.queued)
        max_queue.add_metric([name], model.max_queue)
        slots.add_metric([name], model.spec.max_concurrent)
        memory.add_metric([name], model.memory_bytes)
    budget = GaugeMetricFamily("kaset_model_memory_budget_bytes", "Memory all loaded models may take together "
                               "(KASET_MODEL_MEMORY_BUDGET_MB); 0: no budget.",
                               value=m.models.policy.memory_budget_bytes if m.models is not None else 0)
    loads = CounterMetricFamily("kaset_model_loads", "Model loads by reason: startup, request (lazy, on first "
                                "use), admin (repository API).", labels=["model", "reason"])
    for (model_name, reason), n in m._model_loads.items():
        loads.add_metric([model_name, reason], n)
    unloads = CounterMetricFamily("kaset_model_unloads", "Model unloads by reason: idle (TTL), lru (evicted to make "
                                  "room under the memory budget), admin, budget (did not fit after loading).",
                                  labels=["model", "reason"])
    for (model_name, reason), n in m._model_unloads.items():
        unloads.add_metric([model_name, reason], n)
    return (count, in_flight, queued, max_queue, slots, memory, budget, loads, unloads)


def _routing_families(m: Metrics) -> Iterable[Metric]:
    breakers = GaugeMetricFamily("kaset_breaker_state", "Circuit breaker of each upstream that has failed at least "
                                 "once, in this process: 0 closed, 1 open (failing fast), 2 half-open.",
                                 labels=["upstream"])
    for upstream, state in (m.router.breaker_states() if m.router is not None else []):
        breakers.add_metric([upstream], BREAKER_GAUGE_VALUES[state])
    fallbacks = CounterMetricFamily("kaset_fallbacks", "Routed calls that moved from one model to the next "
                                    "(to_model \"none\": every candidate failed).",
                                    labels=["route", "from_model", "to_model", "reason"])
    for labels, n in m._fallbacks.items():
        fallbacks.add_metric(list(labels), n)
    retries = CounterMetricFamily("kaset_retries", "Routed idempotent calls tried again on the same model.",
                                  labels=["model", "reason"])
    for (model, reason), n in m._retries.items():
        retries.add_metric([model, reason], n)
    return (breakers, fallbacks, retries)


def _request_log_families(log: RequestLog | None) -> Iterable[Metric]:
    buffered = GaugeMetricFamily("kaset_request_log_buffered_rows", "Request-log rows waiting to be written.",
                                 value=log.buffered if log else 0)
    capacity = GaugeMetricFamily("kaset_request_log_buffer_capacity_rows", "Rows the buffer holds before it drops "
                                 "the oldest.", value=log.max_rows if log else 0)
    written = CounterMetricFamily("kaset_request_log_written_rows", "Request-log rows written to the database.",
                                  value=log.written if log else 0)
    dropped = CounterMetricFamily("kaset_request_log_dropped_rows", "Request-log rows dropped because the buffer "
                                  "was full (the database was unreachable too long).", value=log.dropped if log else 0)
    failures = CounterMetricFamily("kaset_request_log_flush_failures", "Failed attempts to write a batch.",
                                   value=log.flush_failures if log else 0)
    return (buffered, capacity, written, dropped, failures)
