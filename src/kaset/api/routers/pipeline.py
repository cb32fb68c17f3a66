"""POST /v1/pipeline: ULCA/Bhashini-shaped pipelines (asr, translation, tts and Kaset's own tasks)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from kaset.api.deps import (
    AdvisorDep,
    DescriberDep,
    DiagnoserDep,
    ModelsDep,
    RouterDep,
    SettingsDep,
    SpeechDep,
    check_model_allowed,
    require_json,
)
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.pipeline import PipelineRequest, PipelineResponse, TaskResponse
from kaset.api.uploads import image_from_base64
from kaset.errors import InvalidRequest
from kaset.pipelines.ulca import Inputs, Limits, Pipeline, Task, decode_base64

router = APIRouter(tags=["pipelines"])


def _inputs(body: PipelineRequest) -> Inputs:
    data = body.inputData
    inputs = Inputs(texts=[t.source or "" for t in data.input if t.source is not None])
    for i, audio in enumerate(data.audio):
        if audio.audioContent is None:
            if audio.audioUri:
                raise InvalidRequest("audioUri is not supported (this server fetches nothing); send the audio "
                                     "as base64 in audioContent.", param=f"inputData.audio[{i}].audioUri")
            continue
        inputs.audio.append(decode_base64(audio.audioContent, f"inputData.audio[{i}].audioContent"))
    for i, image in enumerate(data.image):
        if image.imageContent is not None:
            inputs.images.append(image_from_base64(image.imageContent, f"inputData.image[{i}].imageContent"))
    return inputs


@policy(budgets=("audio_seconds_per_day", "tokens_per_day"))
@router.post("/v1/pipeline", response_model=PipelineResponse, dependencies=[Depends(require_json)])
async def run_pipeline(body: PipelineRequest, request: Request, settings: SettingsDep, speech: SpeechDep,
                       routing: RouterDep, models: ModelsDep, advisor: AdvisorDep, diagnoser: DiagnoserDep,
                       describer: DescriberDep) -> Response:
    pipeline = Pipeline(
        speech=speech, router=routing, manager=models, advisor=advisor, diagnoser=diagnoser, describer=describer,
        limits=Limits(max_text_chars=settings.max_text_chars, max_speech_chars=settings.max_speech_chars,
                      max_upload_bytes=settings.max_upload_bytes, max_image_pixels=settings.max_image_pixels),
        check_model=lambda name: check_model_allowed(request, name))
    tasks = [Task(type=t.taskType, config=t.config.model_dump(exclude_none=True)) for t in body.pipelineTasks]
    results, total_ms = await pipeline.run(tasks, _inputs(body))
    response = PipelineResponse(
        pipelineResponse=[TaskResponse(taskType=r.task_type, config=r.config, output=r.output,
                                       audio=r.audio, timingMs=r.ms) for r in results],
        timingMs=total_ms)
    used = [str(r.config["serviceId"]) for r in results if r.config.get("serviceId")]
    return json_response(response, headers={"x-kaset-model": ",".join(dict.fromkeys(used)) or "none"})
