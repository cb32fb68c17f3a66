"""FastAPI dependencies: the app's services and authentication."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from kaset.auth.keys import KeyInfo, KeyStore
from kaset.config import Settings
from kaset.errors import AuthenticationFailed, UnsupportedMediaType
from kaset.pipelines.advice import AdviceService
from kaset.pipelines.diagnose import DiagnosisService
from kaset.registry.manager import ModelManager
from kaset.store.db import Database


@dataclass
class Services:
    """Everything a request handler may need; built in the app's lifespan."""

    settings: Settings
    db: Database
    keys: KeyStore
    models: ModelManager
    advisor: AdviceService
    diagnoser: DiagnosisService


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def authenticate(request: Request) -> KeyInfo | None:
    svc: Services = request.app.state.services
    if not svc.settings.auth_enabled:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise AuthenticationFailed(
            "No API key provided. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > 256:
        raise AuthenticationFailed("Malformed Authorization header. Use 'Authorization: Bearer <key>'.")
    info = await svc.keys.verify(key)
    request.state.key = info
    return info


async def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.split(";")[0].strip().lower().endswith(("/json", "+json")):
        raise UnsupportedMediaType(
            f"This endpoint takes a JSON body; got content type '{content_type or 'none'}'. "
            "Send 'Content-Type: application/json'."
        )


async def require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"This endpoint takes a multipart/form-data upload; got '{content_type or 'none'}'."
        )
