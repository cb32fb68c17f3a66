"""POST /v1/diagnose: photo -> plant gate -> crop models -> diagnosis and treatment plan."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from kaset.api.deps import Services, services
from kaset.api.responses import json_response
from kaset.api.schemas.advice import SourceRef
from kaset.api.schemas.diagnose import (
    DiagnoseJSONRequest,
    DiagnoseResponse,
    GateReport,
    ModelReport,
    ScoredLabel,
    TreatmentPlan,
)
from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from kaset.media.image import decode_image
from kaset.pipelines.diagnose import Diagnosis, Scored

router = APIRouter(tags=["crop guardian"])


def _scored(items: list[Scored]) -> list[ScoredLabel]:
    return [ScoredLabel(label=s.label, index=s.index, score=round(s.score, 5)) for s in items]


def _plan(diagnosis: Diagnosis) -> TreatmentPlan | None:
    entry = diagnosis.entry
    if entry is None or diagnosis.plan_text is None:
        return None
    content = entry.content(diagnosis.language)
    return TreatmentPlan(
        entry_id=entry.id, name=content.name, summary=content.summary, symptoms=content.symptoms,
        cause=content.cause, actions=content.cultural_treatment,
        chemical=[{"active_ingredient": c.active_ingredient, "how": c.how} for c in content.chemical_treatment],
        safety=content.safety, prevention=content.prevention, season_notes=content.season_notes,
        region_notes=content.region_notes, text=diagnosis.plan_text,
        sources=[SourceRef(**s.model_dump()) for s in entry.sources],
    )


def to_response(diagnosis: Diagnosis) -> DiagnoseResponse:
    gate = diagnosis.gate
    used = ([f"{gate.model}@{gate.version}"] if gate else []) + [f"{r.model}@{r.version}" for r in diagnosis.per_model]
    return DiagnoseResponse(
        status=diagnosis.status, message=diagnosis.message, language=diagnosis.language, crop=diagnosis.crop,
        crop_source=diagnosis.crop_source, label=diagnosis.label,
        confidence=None if diagnosis.confidence is None else round(diagnosis.confidence, 5),
        top=_scored(diagnosis.top),
        per_model=[ModelReport(slot=r.slot, model=r.model, version=r.version, top=_scored(r.top))
                   for r in diagnosis.per_model],
        ensemble=diagnosis.ensemble, models_used=list(dict.fromkeys(used)),
        gate=GateReport(passed=gate.passed, model=gate.model, version=gate.version,
                        plant_score=round(gate.plant_score, 5), top=_scored(gate.top)) if gate else None,
        plan=_plan(diagnosis), retake_tips=diagnosis.retake_tips,
    )


def _image_from_base64(value: str) -> bytes:
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InvalidRequest("The data URL must be base64-encoded.", param="image")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'image' is not valid base64.", param="image") from None


async def _read_request(request: Request, max_bytes: int) -> tuple[bytes, DiagnoseJSONRequest]:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=max_bytes)
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Send the photo as a file field named 'image'.", param="image")
        data = await upload.read(max_bytes + 1)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        fields["image"] = ""
    elif content_type.split(";")[0].strip().endswith("json"):
        try:
            body = DiagnoseJSONRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            if first.get("type") == "json_invalid":
                raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
            raise ValidationFailed(f"Invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                                   param=".".join(map(str, first["loc"]))) from None
        return _image_from_base64(body.image), body
    else:
        raise UnsupportedMediaType("Send the photo as multipart/form-data (field 'image') or JSON with a "
                                   "base64 'image'.")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The photo is larger than this server's limit of {max_bytes} bytes.", param="image")
    try:
        options = DiagnoseJSONRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValidationFailed(f"Invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                               param=".".join(map(str, first["loc"]))) from None
    return data, options


@router.post("/v1/diagnose", response_model=DiagnoseResponse,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "image": {"type": "string", "format": "binary"}, "crop": {"type": "string"},
                     "language": {"type": "string", "enum": ["th", "en"]}, "compare": {"type": "boolean"}}}},
                 "application/json": {"schema": DiagnoseJSONRequest.model_json_schema()}}}})
async def diagnose(request: Request, svc: Services = Depends(services)) -> Response:
    data, options = await _read_request(request, svc.settings.max_upload_bytes)
    image = await asyncio.to_thread(decode_image, data, max_pixels=svc.settings.max_image_pixels)
    language: Literal["th", "en"] = options.language
    diagnosis = await svc.diagnoser.diagnose(image, crop=options.crop, language=language, k=options.top_k,
                                             compare=options.compare, ab_key=options.ab_key)
    return json_response(to_response(diagnosis), headers={"x-kaset-model": ",".join(
        f"{r.model}@{r.version}" for r in diagnosis.per_model) or "none"})


