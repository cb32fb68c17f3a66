"""GET /v1/usage: the caller's usage by day and model; admins may see any key's or everyone's.

Figures come from the daily rollups, which the request-log flusher updates with each batch:
they trail live traffic by at most the flush interval (KASET_REQUEST_LOG_FLUSH_MS, 1 s).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError

from kaset.api.deps import DatabaseDep, QuotasDep
from kaset.api.policy import PLAIN, apply_policy
from kaset.api.responses import json_response
from kaset.api.schemas.usage import UsageDay, UsageReport, UsageUnits
from kaset.errors import InvalidRequest, KasetError, PermissionDenied
from kaset.store.usage_report import UsageScope, daily_usage, totals

router = APIRouter(tags=["usage"])

MAX_DAYS = 366
MAX_ROWS = 10_000


class UsageUnavailable(KasetError):
    status_code = 503
    error_type = "server_error"
    code = "database_unavailable"


def usage_scope(request: Request, key_id: int | None, everyone: bool) -> UsageScope:
    """Whose usage the caller may read: the one place that holds the role rule for /v1/usage.

    A caller sees their own usage: every key of their user when keys belong to users, else
    their own key. Admins may name any key (`key_id`) or ask for everyone's (`all=true`). With
    authentication off there is no caller to scope to and the server is open anyway: everyone's.
    """
    caller = getattr(request.state, "key", None)
    if caller is None:
        return UsageScope(key_id=key_id)
    admin = bool(getattr(caller, "is_admin", getattr(caller, "role", None) == "admin"))
    own_user: int | None = getattr(caller, "user_id", None)
    if everyone:
        if not admin:
            raise PermissionDenied("Only an admin may see everyone's usage (all=true).")
        return UsageScope(key_id=key_id)
    if key_id is None:
        return UsageScope(user_id=own_user) if own_user is not None else UsageScope(key_id=caller.id)
    if admin:
        return UsageScope(key_id=key_id)
    if own_user is not None:
        # Another key of the caller's own user is fine; the user filter keeps out anyone else's.
        return UsageScope(key_id=key_id, user_id=own_user)
    if key_id != caller.id:
        raise PermissionDenied("Only an admin may see another key's usage.", param="key_id")
    return UsageScope(key_id=key_id)


def _units(row: dict[str, Any]) -> dict[str, Any]:
    requests = int(row["requests"])
    return {
        "requests": requests, "errors": int(row["errors"]), "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]), "audio_seconds": round(float(row["audio_seconds"]), 3),
        "images": int(row["images"]), "characters": int(row["characters"]),
        "mean_latency_ms": round(float(row["latency_ms_sum"]) / requests, 3) if requests else 0.0,
        "mean_overhead_ms": round(float(row["overhead_ms_sum"]) / requests, 3) if requests else 0.0,
    }


@router.get("/v1/usage", response_model=UsageReport)
async def usage(
    request: Request,
    db: DatabaseDep,
    start: Annotated[date | None, Query(description="First day (UTC), default 29 days before `end`.")] = None,
    end: Annotated[date | None, Query(description="Last day (UTC), inclusive; default today.")] = None,
    key_id: Annotated[int | None, Query(description="Another key's usage (admins), or one of your keys.")] = None,
    all_keys: Annotated[bool, Query(alias="all", description="Everyone's usage (admins only).")] = False,
    model: Annotated[str | None, Query(description="Only this model id.", max_length=200)] = None,
) -> Response:
    scope = usage_scope(request, key_id, all_keys)
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=29)
    if start > end:
        raise InvalidRequest("'start' is after 'end'.", param="start")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"Ask for at most {MAX_DAYS} days at a time.", param="start")
    try:
        rows = await daily_usage(db, scope, start, end, model=model, limit=MAX_ROWS + 1)
    except (OSError, TimeoutError, DBAPIError) as exc:
        raise UsageUnavailable("Usage figures are unavailable: the database cannot be reached. Requests are "
                               "still served and logged; try again shortly.") from exc
    truncated = len(rows) > MAX_ROWS
    rows = rows[:MAX_ROWS]
    report = UsageReport(
        start=start, end=end, key_id=scope.key_id, user_id=scope.user_id, all=scope.everyone,
        data=[UsageDay(date=row["day"], key_id=row["key_id"] or None, user_id=row["user_id"],
                       model=row["model"] or None, **_units(row)) for row in rows],
        totals=UsageUnits(**_units(totals(rows))), truncated=truncated,
    )
    return json_response(report)


@router.get("/v1/limits")
async def my_limits(request: Request, quotas: QuotasDep) -> dict[str, Any]:
    """The caller's limits (key and account), what remains of each and when it resets.

    This request itself counts against the per-minute rate like any other."""
    caller = getattr(request.state, "key", None)
    if caller is None:
        return {"object": "limits", "limited": False, "shared": quotas.shared, "degraded": quotas.degraded,
                "scopes": {}}
    scopes = await quotas.status(caller)
    return {"object": "limits", "limited": bool(scopes), "shared": quotas.shared,
            "degraded": quotas.degraded, "scopes": scopes}


apply_policy(router, PLAIN)
