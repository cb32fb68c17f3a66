"""POST /v1/crop-doctor: photo and/or spoken or typed question -> diagnosis, grounded advice, speech."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from kaset.api.deps import AdvisorDep, DiagnoserDep, SettingsDep, SpeechDep
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.routers.advice import to_response as advice_response
from kaset.api.routers.diagnose import to_response as diagnose_response
from kaset.api.schemas.crop_doctor import (
    CropDoctorJSONRequest,
    CropDoctorResponse,
    CropDoctorTimings,
)
from kaset.api.schemas.voice import VoiceAudio, VoiceNotice
from kaset.api.uploads import image_from_base64
from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from kaset.media.image import decode_image
from kaset.pipelines.crop_doctor import Consultation, CropDoctor, Verdict
from kaset.registry.routing import caller_key

router = APIRouter(tags=["crop guardian"])

_FORM_SCHEMA = {"type": "object", "properties": {
    "image": {"type": "string", "format": "binary"}, "audio": {"type": "string", "format": "binary"},
    "question": {"type": "string"}, "language": {"type": "string", "enum": ["auto", "th", "en"]},
    "crop": {"type": "string"}, "speak": {"type": "boolean"}, "voice": {"type": "string"},
    "response_format": {"type": "string", "enum": ["wav", "mp3"]}, "compare": {"type": "boolean"}}}


def _invalid(exc: ValidationError) -> ValidationFailed:
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"]))
    return ValidationFailed(f"Invalid request: {where}: {first['msg']}", param=where)


def _checked_size(data: bytes, max_bytes: int, what: str, param: str) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The {what} is larger than this server's limit of {max_bytes} bytes.", param=param)
    return data


async def _read(request: Request, max_bytes: int) -> tuple[CropDoctorJSONRequest, bytes | None, bytes | None]:
    """(options, photo bytes, audio bytes) from a multipart form or a JSON body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=max_bytes)
        files: dict[str, bytes | None] = {}
        for name, what in (("image", "photo"), ("audio", "recording")):
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                files[name] = _checked_size(await upload.read(max_bytes + 1), max_bytes, what, name) or None
            else:
                files[name] = None
        # An empty text field is a field left blank, not a value ("" is no crop, no question).
        fields = {k: v for k, v in form.items() if isinstance(v, str) and v.strip() and k not in files}
        try:
            return CropDoctorJSONRequest.model_validate(fields), files["image"], files["audio"]
        except ValidationError as exc:
            raise _invalid(exc) from None
    if content_type.split(";")[0].strip().endswith("json"):
        try:
            body = CropDoctorJSONRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            if exc.errors()[0].get("type") == "json_invalid":
                raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
            raise _invalid(exc) from None
        image = _checked_size(image_from_base64(body.image, "image"), max_bytes, "photo", "image") \
            if body.image else None
        audio = _checked_size(image_from_base64(body.audio, "audio"), max_bytes, "recording", "audio") \
            if body.audio else None
        return body, image, audio
    raise UnsupportedMediaType("Send multipart/form-data (files 'image' and/or 'audio', field 'question') or "
                               "JSON with base64 'image'/'audio' strings.")


def to_response(verdict: Verdict) -> CropDoctorResponse:
    spoken = verdict.audio
    timings = verdict.timings
    return CropDoctorResponse(
        language=verdict.language, question=verdict.question, transcript=verdict.transcript,
        diagnosis=diagnose_response(verdict.diagnosis) if verdict.diagnosis is not None else None,
        advice=advice_response(verdict.advice) if verdict.advice is not None else None,
        answer=verdict.answer,
        audio=VoiceAudio(format=spoken.format, data=base64.b64encode(spoken.audio).decode("ascii"),
                          seconds=round(spoken.seconds, 3), model=spoken.model, voice=spoken.voice)
        if spoken is not None else None,
        notices=[VoiceNotice(code=n.code, message=n.message) for n in verdict.notices],
        understood=verdict.understood,
        timings=CropDoctorTimings(**{k: None if v is None else round(v, 1) for k, v in vars(timings).items()}),
    )


@policy(budgets=("images_per_day", "audio_seconds_per_day", "tokens_per_day"))
@router.post("/v1/crop-doctor", response_model=CropDoctorResponse,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": _FORM_SCHEMA},
                 "application/json": {"schema": CropDoctorJSONRequest.model_json_schema()}}}})
async def crop_doctor(request: Request, diagnoser: DiagnoserDep, advisor: AdvisorDep, speech: SpeechDep,
                      settings: SettingsDep) -> Response:
    """One call for a farmer: a photo and/or a question (typed, or spoken as audio), Thai or English."""
    options, image_bytes, audio = await _read(request, settings.max_upload_bytes)
    image = (await asyncio.to_thread(decode_image, image_bytes, max_pixels=settings.max_image_pixels)
             if image_bytes is not None else None)

    def caller() -> str | None:
        return caller_key(request)

    doctor = CropDoctor(diagnoser, advisor, speech)
    verdict = await doctor.consult(Consultation(
        image=image, audio=audio, question=options.question, language=options.language, crop=options.crop,
        speak=options.speak, voice=options.voice, fmt=options.response_format, compare=options.compare,
        rephrase=options.rephrase, caller=caller))
    headers: dict[str, Any] = {}
    used = ([f"{r.model}@{r.version}" for r in verdict.diagnosis.per_model] if verdict.diagnosis else []) + \
        [m for m in (verdict.heard.model if verdict.heard else None,
                     verdict.advice.llm_model if verdict.advice else None,
                     verdict.audio.model if verdict.audio else None) if m]
    headers["x-kaset-model"] = ",".join(dict.fromkeys(used)) or "none"
    return json_response(to_response(verdict), headers=headers)
