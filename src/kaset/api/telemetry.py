"""What the gateway middleware records when a request is done: metrics and a request-log row.

Kept apart from the middleware so the middleware stays about HTTP, and cheap: this runs once
per request on the event loop, so it does a few dict operations and appends one tuple.
"""

from __future__ import annotations

from starlette.types import Scope

from kaset.api.policy import PLAIN, policy_of
from kaset.config import Settings
from kaset.metrics import Metrics
from kaset.registry.manager import ModelManager
from kaset.store.db import Database
from kaset.store.request_log import RequestLog
from kaset.usage import RequestUsage

# The route label of requests that never reached a route (404s, early 413s): a raw path
# would let any client create a new time series per URL.
UNROUTED = "<unrouted>"
# Probes and scrapes are counted in the metrics but not logged: they are not usage, and a
# 5 s probe would otherwise write 17,000 rows a day per replica.


class Telemetry:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Set in the app's lifespan once the database is open; None means "do not log".
        self.request_log: RequestLog | None = None

    def start(self, db: Database, settings: Settings, models: ModelManager) -> None:
        """Called from the app's lifespan: start the request log and let /metrics see the models."""
        self.metrics.models = models
        if settings.request_log:
            self.request_log = RequestLog(
                db, max_rows=settings.request_log_buffer_rows, flush_rows=settings.request_log_flush_rows,
                flush_interval_s=settings.request_log_flush_ms / 1000, retention_days=settings.log_retention_days)
            self.request_log.start()
            self.metrics.request_log = self.request_log

    async def stop(self) -> None:
        """Write what the request log still holds (bounded in time) and stop its tasks."""
        request_log, self.request_log = self.request_log, None
        if request_log is not None:
            await request_log.close()

    def finish(self, scope: Scope, request_id: str, started_at: float, duration_s: float, inference_s: float,
               status: int, model_header: str | None, usage: RequestUsage) -> None:
        """Record one finished request, or WebSocket session (its method is logged as WEBSOCKET).
        `started_at` is the wall-clock arrival time (epoch s)."""
        route_obj = scope.get("route")
        route: str = getattr(route_obj, "path", UNROUTED) if route_obj is not None else UNROUTED
        model = usage.model or model_header or ""
        overhead_s = duration_s - inference_s
        if overhead_s < 0.0:
            overhead_s = 0.0
        self.metrics.observe_request(route, model, status, duration_s, overhead_s, inference_s, usage)
        request_log = self.request_log
        if request_log is None or not (policy_of(route_obj) or PLAIN).logged:
            return
        # The auth dependency leaves the verified key in request.state (scope["state"]).
        state = scope.get("state")
        key = state.get("key") if state else None
        request_log.add((
            started_at, request_id, getattr(key, "id", None), getattr(key, "user_id", None), route,
            scope.get("method", "WEBSOCKET"), model or None, status, duration_s * 1000.0, overhead_s * 1000.0,
            usage.prompt_tokens, usage.completion_tokens, usage.audio_seconds, usage.images, usage.characters,
        ))
