"""POST /v1/describe-image: a photo in, a short description out, saying how it was made."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kaset import usage
from kaset.api.deps import DescriberDep, SettingsDep
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.describe import DescribeJSONRequest, DescribeResponse, FallbackReport
from kaset.api.schemas.diagnose import ScoredLabel
from kaset.api.uploads import read_image_request
from kaset.media.image import decode_image
from kaset.pipelines.describe import Description

router = APIRouter(tags=["vision"])


def to_response(description: Description) -> DescribeResponse:
    return DescribeResponse(
        description=description.text, method=description.method, language=description.language,
        requested_language=description.requested_language, note=description.note, model=description.model,
        classifier=description.classifier,
        labels=[ScoredLabel(label=s.label, index=s.index, score=round(s.score, 5)) for s in description.labels],
        fallbacks=[FallbackReport(model=f.model, error=f.error) for f in description.fallbacks],
        notes=description.notes, models_used=description.models_used,
    )


@policy(budgets=("images_per_day", "tokens_per_day"))
@router.post("/v1/describe-image", response_model=DescribeResponse,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "image": {"type": "string", "format": "binary"},
                     "language": {"type": "string", "enum": ["en", "th"]}, "prompt": {"type": "string"}}}},
                 "application/json": {"schema": DescribeJSONRequest.model_json_schema()}}}})
async def describe_image(request: Request, describer: DescriberDep, settings: SettingsDep) -> Response:
    data, options = await read_image_request(request, settings.max_upload_bytes, DescribeJSONRequest)
    image = await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)
    description = await describer.describe(image, language=options.language, prompt=options.prompt)
    usage.record(images=1, prompt_tokens=description.prompt_tokens, completion_tokens=description.completion_tokens)
    return json_response(to_response(description),
                         headers={"x-kaset-model": ",".join(description.models_used) or "none"})
