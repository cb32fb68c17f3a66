"""POST /v1/listings: product photo -> schema-validated listing JSON."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from kaset import usage
from kaset.api.deps import DescriberDep, RouterDep, SettingsDep, check_model_allowed
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.diagnose import ScoredLabel
from kaset.api.schemas.listing import ListingJSONRequest, ListingResponse
from kaset.api.uploads import read_image_request
from kaset.media.image import decode_image
from kaset.pipelines.listing import (
    DEFAULT_MAX_KEYWORDS,
    MAX_KEYWORDS_LIMIT,
    MIN_KEYWORDS,
    ListingResult,
    ListingService,
    listing_schema,
)

router = APIRouter(tags=["pipelines"])


def to_response(result: ListingResult) -> ListingResponse:
    return ListingResponse(
        listing=result.listing, method=result.method, attempts=result.attempts, model=result.model,
        labels=[ScoredLabel(label=s.label, index=s.index, score=round(s.score, 5)) for s in result.labels],
        errors=result.errors, constrained=result.constrained, language="en",
        requested_language=result.requested_language, source_description=result.description.text,
        description_method=result.description.method, notes=[*result.description.notes, *result.notes],
    )


@policy(budgets=("images_per_day", "tokens_per_day"))
@router.post("/v1/listings", response_model=ListingResponse,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                     "image": {"type": "string", "format": "binary"}, "notes": {"type": "string"},
                     "language": {"type": "string", "enum": ["en", "th"]},
                     "max_keywords": {"type": "integer", "minimum": MIN_KEYWORDS,
                                      "maximum": MAX_KEYWORDS_LIMIT}}}},
                 "application/json": {"schema": ListingJSONRequest.model_json_schema()}}}})
async def write_listing(request: Request, describer: DescriberDep, routing: RouterDep,
                        settings: SettingsDep) -> Response:
    data, options = await read_image_request(request, settings.max_upload_bytes, ListingJSONRequest)
    image = await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)
    writer = ListingService(describer, routing, llm=describer.llm)
    for name in filter(None, (describer.classifier, writer.llm if writer.llm_available() else None)):
        check_model_allowed(request, name)
    result = await writer.write(image, notes=options.notes, language=options.language,
                                max_keywords=options.max_keywords)
    usage.record(images=1, prompt_tokens=result.prompt_tokens + result.description.prompt_tokens,
                 completion_tokens=result.completion_tokens + result.description.completion_tokens,
                 model=result.model)
    models = dict.fromkeys([*result.description.models_used, *([result.model] if result.model else [])])
    return json_response(to_response(result), headers={"x-kaset-model": ",".join(models) or "none"})


@policy()
@router.get("/v1/listings/schema", responses={200: {"description": "The listing's JSON schema (draft 2020-12)."}})
async def schema(max_keywords: int = Query(DEFAULT_MAX_KEYWORDS, ge=MIN_KEYWORDS, le=MAX_KEYWORDS_LIMIT)
                 ) -> JSONResponse:
    """The JSON schema every listing satisfies (keywords' maxItems follows `max_keywords`)."""
    return JSONResponse(listing_schema(max_keywords), media_type="application/schema+json")
