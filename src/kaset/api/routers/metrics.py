"""GET /metrics: Prometheus text format, no authentication (scrapers carry no API key; keep
the port private or filter /metrics at the proxy if the figures are sensitive)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kaset.api.policy import PROBE, apply_policy
from kaset.metrics import Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    app_metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)


apply_policy(router, PROBE)
