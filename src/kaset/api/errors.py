"""Every error leaves the gateway in the OpenAI envelope with a status a client can act on."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kaset.errors import KasetError

log = logging.getLogger(__name__)


def error_response(status: int, message: str, error_type: str, code: str | None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _kaset_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KasetError)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


def _describe_validation(errors: list[Any]) -> tuple[str, str | None, bool]:
    """(message, param, is_malformed_json) for FastAPI's validation errors."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return f"The request body is not valid JSON ({detail}).", None, True
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form", "header")]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form", "header")]
    return "Invalid request: " + "; ".join(parts), (".".join(loc) or None), False


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param, malformed = _describe_validation(list(exc.errors()))
    if malformed:
        return error_response(400, message, "invalid_request_error", "invalid_json")
    return error_response(422, message, "invalid_request_error", "validation_error", param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    messages = {
        404: f"No route {request.method} {request.url.path}. See /docs for the API.",
        405: f"Method {request.method} is not allowed on {request.url.path}.",
    }
    message = messages.get(exc.status_code, str(exc.detail))
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, message, error_type, None, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.headers.get("x-request-id", "")
    log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, request_id)
    return error_response(
        500, "The server hit an unexpected error. It has been logged; please retry or report it.",
        "server_error", "internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KasetError, _kaset_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
