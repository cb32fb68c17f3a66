"""POST /v1/diagnose: photo -> plant gate -> crop models -> diagnosis and treatment plan."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kaset import usage
from kaset.api.deps import DiagnoserDep, SettingsDep
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.advice import SourceRef
from kaset.api.schemas.diagnose import (
    DiagnoseJSONRequest,
    DiagnoseResponse,
    GateReport,
    LeafReport,
    ModelReport,
    ScoredLabel,
    SignalReport,
    TreatmentPlan,
)
from kaset.api.uploads import read_image_request
from kaset.media.image import decode_image
from kaset.pipelines.diagnose import Diagnosis, GateResult, Scored

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


def _gate(gate: GateResult) -> GateReport:
    leaf = gate.leaf
    return GateReport(
        passed=gate.passed, model=gate.model, version=gate.version, plant_score=round(gate.plant_score, 5),
        top=_scored(gate.top), decided_by=gate.decided_by,
        signals=[SignalReport(name=s.name, value=round(s.value, 4), threshold=s.threshold, passed=s.passed)
                 for s in gate.signals],
        leaf=LeafReport(colour_fraction=round(leaf.colour_fraction, 4), area=round(leaf.area, 4),
                        elongation=round(leaf.elongation, 3), solidity=round(leaf.solidity, 3),
                        edges_touched=leaf.edges_touched) if leaf else None)


def to_response(diagnosis: Diagnosis) -> DiagnoseResponse:
    gate = diagnosis.gate
    used = ([f"{gate.model}@{gate.version}"] if gate else []) + [f"{r.model}@{r.version}" for r in diagnosis.per_model]
    return DiagnoseResponse(
        status=diagnosis.status, message=diagnosis.message, language=diagnosis.language, crop=diagnosis.crop,
        crop_source=diagnosis.crop_source, label=diagnosis.label,
        confidence=None if diagnosis.confidence is None else round(diagnosis.confidence, 5),
        confidence_level=diagnosis.confidence_level, models_agree=diagnosis.models_agree,
        decided_by=diagnosis.decided_by, top=_scored(diagnosis.top),
        per_model=[ModelReport(slot=r.slot, model=r.model, version=r.version, top=_scored(r.top))
                   for r in diagnosis.per_model],
        ensemble=diagnosis.ensemble, models_used=list(dict.fromkeys(used)),
        gate=_gate(gate) if gate else None,
        plan=_plan(diagnosis), retake_tips=diagnosis.retake_tips,
    )


@policy(budgets=("images_per_day",))
@router.post("/v1/diagnose", response_model=DiagnoseResponse,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "image": {"type": "string", "format": "binary"}, "crop": {"type": "string"},
                     "language": {"type": "string", "enum": ["th", "en"]}, "compare": {"type": "boolean"}}}},
                 "application/json": {"schema": DiagnoseJSONRequest.model_json_schema()}}}})
async def diagnose(request: Request, diagnoser: DiagnoserDep, settings: SettingsDep) -> Response:
    data, options = await read_image_request(request, settings.max_upload_bytes, DiagnoseJSONRequest)
    image = await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)
    language: Literal["th", "en"] = options.language
    diagnosis = await diagnoser.diagnose(image, crop=options.crop, language=language, k=options.top_k,
                                         compare=options.compare, ab_key=options.ab_key)
    usage.record(images=1)
    return json_response(to_response(diagnosis), headers={"x-kaset-model": ",".join(
        f"{r.model}@{r.version}" for r in diagnosis.per_model) or "none"})
