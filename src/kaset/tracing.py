"""OpenTelemetry tracing: a server span per request, W3C `traceparent` on the calls it makes.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and
`OTEL_SDK_DISABLED` is not `true`. Off costs nothing per request: the SDK is not imported, no
tracer provider exists and no middleware is added; `inject` and `model_call` read one context
variable and return.

On, each app holds its own `TracerProvider` (in `app.state.tracing`), never the process-global
one: that can be set only once per process, and tests (or two apps in one process) each want
their own. Spans go out over OTLP HTTP/protobuf, batched from a background thread; the SDK's
other standard variables apply (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`...). The service is `OTEL_SERVICE_NAME`, else
"kaset-gateway" or "kaset-worker".

`TracingMiddleware` is a pure ASGI middleware (outermost, so its span covers everything):
it continues an incoming `traceparent`, makes the span current for the request, and ends it
after the last body byte. The router opens a `model_call` child span around each attempt on
a model (kaset.registry.fallbacks). Outgoing calls (to a worker, to an external provider) call
`inject` on the headers they send, so the callee's span is a child of the current one. See
docs/tracing.md.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span as Span  # re-exported: model_call's spans
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaset import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.applications import Starlette

GATEWAY_SERVICE = "kaset-gateway"
WORKER_SERVICE = "kaset-worker"
# How long a shutdown waits for the last spans to be exported.
SHUTDOWN_GRACE_S = 3.0

# Set in the request's OpenTelemetry context next to its span, so code deep in a request can
# open child spans (`model_call`) without being handed the app's tracer.
_TRACER_KEY = otel_context.create_key("kaset-tracer")
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[None] = nullcontext()


@dataclass
class Tracing:
    """One app's tracer and the provider that exports its spans."""

    provider: TracerProvider
    tracer: trace.Tracer
    service: str
    exporter: SpanExporter

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Export what is still buffered and stop. A collector that is down would hold this for
        the exporter's whole timeout (10 s by default), retrying: after `grace_s` the exporter
        is shut down, which ends its retries."""
        timer = threading.Timer(grace_s, self.exporter.shutdown)
        timer.daemon = True
        timer.start()
        try:
            self.provider.shutdown()
        finally:
            timer.cancel()


def enabled_by_env() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(default_service: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """The app's tracing, or None when it is off (see the module doc).

    With `exporter` (tests, debugging) tracing is on whatever the environment says, and each
    span is handed to that exporter synchronously as it ends."""
    if exporter is None and not enabled_by_env():
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, provider.get_tracer("kaset", __version__), service, exporter)


def install_tracing(app: Starlette, default_service: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """Set up the app's tracing (None: off) and, when on, add `TracingMiddleware` outermost:
    call it after the app's other `add_middleware` calls. `shutdown_tracing` undoes it."""
    tracing = setup(default_service, exporter)
    app.state.tracing = tracing
    if tracing is not None:
        app.add_middleware(TracingMiddleware, tracing=tracing)
    return tracing


async def shutdown_tracing(app: Starlette) -> None:
    """From the app's lifespan: flush and stop its tracer provider (in a thread: a final OTLP
    export may wait on the network)."""
    tracing: Tracing | None = getattr(app.state, "tracing", None)
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)


@contextmanager
def activate(tracing: Tracing) -> Iterator[None]:
    """Make `tracing`'s tracer the one `model_call` and `inject` use in this context, outside an
    HTTP request (a script, a job runner, a test); a request gets it from TracingMiddleware."""
    token = otel_context.attach(otel_context.set_value(_TRACER_KEY, tracing.tracer))
    try:
        yield
    finally:
        otel_context.detach(token)


def inject(headers: dict[str, str]) -> None:
    """Add `traceparent` (and `tracestate`) for the current span to outgoing request headers;
    nothing when no span is current (tracing off, or outside a request)."""
    if otel_context.get_value(_TRACER_KEY) is None:
        return
    _PROPAGATOR.inject(headers)


def model_call(model: str, operation: str,
               attributes: dict[str, str] | None = None) -> AbstractContextManager[Span | None]:
    """`with model_call("whisper-small", "transcribe") as span:` a child span of the request's
    span around one model call, current inside the block (so `inject` there names it); a shared
    no-op context giving None when the request is not traced.

    An exception leaving the block is not recorded by itself: whether it is an error of the
    server's is the caller's to say, with `end_model_call` (a client's bad input is not)."""
    tracer = cast("trace.Tracer | None", otel_context.get_value(_TRACER_KEY))
    if tracer is None:
        return _NO_SPAN
    span_attributes = {"kaset.model": model, "kaset.operation": operation}
    if attributes:
        span_attributes.update(attributes)
    return tracer.start_as_current_span(f"{operation} {model}", kind=SpanKind.INTERNAL, attributes=span_attributes,
                                        record_exception=False, set_status_on_exception=False)


def end_model_call(span: Span, outcome: str, *, remote: bool | None = None, error: BaseException | None = None,
                   fault: bool = False) -> None:
    """Record how a `model_call` ended: `kaset.outcome`, `kaset.remote` (when a handle was had),
    `error.type`; with `fault` (the server's or the upstream's failure) the exception as an
    event and status ERROR."""
    attributes: dict[str, str | bool] = {"kaset.outcome": outcome}
    if remote is not None:
        attributes["kaset.remote"] = remote
    if error is not None:
        attributes["error.type"] = type(error).__name__
    span.set_attributes(attributes)  # one call: the SDK takes a lock per call
    if fault and error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class TracingMiddleware:
    """A SERVER span per HTTP request (WebSockets pass through untraced), named
    "METHOD /route/template", with the method, route, path, status, request id and (from the
    `x-kaset-model` response header) model; status ERROR on 5xx or an exception."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
        # An empty context without one: a request is never the child of whatever happens to be current.
        parent = _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()
        method: str = scope.get("method", "")
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes={
            "http.request.method": method, "url.path": scope.get("path", "")})
        token = otel_context.attach(otel_context.set_value(_TRACER_KEY, self.tracer,
                                                           trace.set_span_in_context(span, parent)))
        status = 0
        model: str | None = None
        failed = False

        async def send_traced(message: Message) -> None:
            nonlocal status, model
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, val in message.get("headers", ()):
                    if key.lower() == b"x-kaset-model":
                        model = val.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            failed = True
            if not status:
                status = 500  # what the server's error middleware answers
            raise
        finally:
            otel_context.detach(token)
            attributes: dict[str, str | int] = {}
            route_obj = scope.get("route")
            route: str | None = getattr(route_obj, "path", None)
            if route:
                span.update_name(f"{method} {route}")
                attributes["http.route"] = route
            if status:
                attributes["http.response.status_code"] = status
                if status >= 500:
                    attributes["error.type"] = str(status)
                    if not failed:
                        span.set_status(Status(StatusCode.ERROR))
            request_id = scope.get("kaset.request_id")
            if request_id:
                attributes["kaset.request_id"] = request_id
            if model:
                attributes["kaset.model"] = model
            span.set_attributes(attributes)  # one call: the SDK takes a lock per call
            span.end()
