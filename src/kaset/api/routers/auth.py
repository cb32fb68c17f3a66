"""Sign-in: POST /v1/auth/token (username + password), POST /v1/auth/refresh (rotates the
refresh token) and POST /v1/auth/logout (ends the sign-in).

Both take JSON or an OAuth2-style form (application/x-www-form-urlencoded), so OAuth2 password
clients work unchanged. Tokens go in `Authorization: Bearer <token>` wherever a key does.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from kaset.api.deps import IdentityDep
from kaset.api.policy import PLAIN, apply_policy
from kaset.api.responses import json_response
from kaset.api.schemas.admin import RefreshRequest, TokenRequest, TokenResponse
from kaset.auth.tokens import TokenPair
from kaset.errors import AuthenticationFailed, InvalidRequest, UnsupportedMediaType, ValidationFailed

log = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])
Body = TypeVar("Body", bound=BaseModel)


def _form_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "application/x-www-form-urlencoded": {"schema": schema}}}}


async def _read(request: Request, model: type[Body]) -> Body:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    if content_type == "application/x-www-form-urlencoded":
        form = await request.form()
        data = {k: v for k, v in form.items() if isinstance(v, str)}
    elif content_type.endswith(("/json", "+json")):
        try:
            data = await request.json()
        except ValueError:
            raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    else:
        raise UnsupportedMediaType("Send JSON or an application/x-www-form-urlencoded form; got "
                                   f"'{content_type or 'none'}'.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise ValidationFailed(f"Invalid request: {where}: {first['msg']}", param=where) from None


def _respond(pair: TokenPair) -> Response:
    # Tokens are credentials: no cache may keep them.
    return json_response(TokenResponse(access_token=pair.access_token, expires_in=pair.expires_in,
                                       refresh_token=pair.refresh_token, refresh_expires_in=pair.refresh_expires_in),
                         headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.post("/v1/auth/token", response_model=TokenResponse, openapi_extra=_form_schema(TokenRequest))
async def token(request: Request, identity: IdentityDep) -> Response:
    """Exchange a username and password for an access token (15 min) and a refresh token (7 days)."""
    body = await _read(request, TokenRequest)
    try:
        pair = await identity.tokens.login(body.username, body.password)
    except AuthenticationFailed:
        client = request.client.host if request.client else "?"
        log.info("failed sign-in for %r from %s", body.username[:100], client)
        raise
    return _respond(pair)


@router.post("/v1/auth/refresh", response_model=TokenResponse, openapi_extra=_form_schema(RefreshRequest))
async def refresh(request: Request, identity: IdentityDep) -> Response:
    """A new token pair for a valid refresh token of an active user. The refresh token sent is
    replaced: keep the new one (the old one works for 30 s more, then using it signs out)."""
    body = await _read(request, RefreshRequest)
    return _respond(await identity.tokens.refresh(body.refresh_token))


@router.post("/v1/auth/logout", status_code=204, openapi_extra=_form_schema(RefreshRequest))
async def logout(request: Request, identity: IdentityDep) -> Response:
    """Sign out: the refresh token, and every token refreshed from the same sign-in, stop working.
    Access tokens already issued stay valid until they expire (at most 15 minutes)."""
    body = await _read(request, RefreshRequest)
    await identity.tokens.revoke(body.refresh_token)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


apply_policy(router, PLAIN)
