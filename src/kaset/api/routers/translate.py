"""Kaset's native translation API: POST /v1/translate, GET /v1/translate/languages."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from kaset import usage
from kaset.api.deps import ModelsDep, RouterDep, SettingsDep, require_json
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.translate import LanguagePair, LanguagePairs, TranslateRequest, TranslateResponse
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import caller_key

router = APIRouter(tags=["translation"])


@policy(model_field=True)
@router.post("/v1/translate", response_model=TranslateResponse, dependencies=[Depends(require_json)])
async def translate(body: TranslateRequest, request: Request, routing: RouterDep, models: ModelsDep,
                    settings: SettingsDep) -> Response:
    texts = [body.text] if isinstance(body.text, str) else body.text
    if not texts:
        raise InvalidRequest("'text' is empty; send a string or a list of strings.", param="text")
    if len(texts) > settings.max_translate_texts:
        raise PayloadTooLarge(f"{len(texts)} texts in one request; the limit is {settings.max_translate_texts}.",
                              param="text")
    total = sum(len(t) for t in texts)
    if total > settings.max_text_chars:
        raise PayloadTooLarge(f"The texts hold {total} characters; the limit is {settings.max_text_chars}.",
                              param="text")
    name = body.model or models.default_model("translate").id

    async def run(model: ModelHandle) -> list[str]:
        return await model.translate(texts, body.source.lower(), body.target.lower())

    # Translation is idempotent: a route's retries apply.
    translations, spec = await routing.call(name, "translate", run, caller=lambda: caller_key(request), retry=True)
    usage.record(characters=total)
    response = TranslateResponse(model=spec.id, source=body.source, target=body.target,
                                 translations=translations)
    return json_response(response, headers=routing.headers(name, spec))


@policy()
@router.get("/v1/translate/languages", response_model=LanguagePairs)
async def languages(routing: RouterDep) -> LanguagePairs:
    pairs: list[LanguagePair] = []
    for spec in routing.models_for("translate"):
        model = await routing.handle(spec.id, "translate")
        pairs.extend(LanguagePair(source=s, target=t, model=spec.id) for s, t in (await model.info()).pairs)
    return LanguagePairs(pairs=pairs)
