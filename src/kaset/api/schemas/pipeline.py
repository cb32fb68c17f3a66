"""ULCA/Bhashini-shaped pipelines (POST /v1/pipeline): the request and response bodies.

Field names follow Bhashini's pipeline compute call (camelCase). Unknown config keys that
Bhashini clients send (preProcessors, postProcessors, domain, sourceScriptCode, ...) are
accepted and echoed back, not used.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskTypeName = Literal["asr", "translation", "tts", "llm", "advice", "diagnose", "describe"]


class LanguageConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    sourceLanguage: str | None = Field(default=None, description="ISO 639-1 code, e.g. 'en' ('auto' for asr).")
    targetLanguage: str | None = Field(default=None, description="Translation only: the language to translate to.")


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    language: LanguageConfig | None = None
    serviceId: str | None = Field(default=None, description="A model id or route (GET /v1/models); optional.")
    gender: Literal["female", "male"] | None = Field(
        default=None, description="tts: accepted for Bhashini clients; installed voices do not declare a gender, "
                                  "so choose one with 'voice'.")
    voice: str | None = Field(default=None, description="tts: a voice id of the model (e.g. 'es' for eSpeak NG).")
    audioFormat: str | None = Field(default=None, description="tts: wav (default), mp3, flac or opus.")
    speed: float | None = Field(default=None, description="tts: 0.25 to 4.0.")
    crop: str | None = Field(default=None, description="advice and diagnose: the crop.")
    systemPrompt: str | None = Field(default=None, description="llm: the system message.")
    maxTokens: int | None = Field(default=None, description="llm: reply length limit (default 200).")
    prompt: str | None = Field(default=None, description="describe: what to ask about the photo.")


class PipelineTask(BaseModel):
    taskType: TaskTypeName
    config: TaskConfig = Field(default_factory=TaskConfig)


class TextInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    source: str | None = None


class AudioInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    audioContent: str | None = Field(default=None, description="The audio file, base64 (wav, mp3, ogg, flac, ...).")
    audioUri: str | None = Field(default=None, description="Not supported: send audioContent.")


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    imageContent: str | None = Field(default=None, description="The photo, base64 (or a data: URL).")


class InputData(BaseModel):
    input: list[TextInput] = Field(default_factory=list)
    audio: list[AudioInput] = Field(default_factory=list)
    image: list[ImageInput] = Field(default_factory=list)


class PipelineRequest(BaseModel):
    pipelineTasks: list[PipelineTask] = Field(min_length=1)
    inputData: InputData = Field(default_factory=InputData)


class TaskResponse(BaseModel):
    taskType: TaskTypeName
    config: dict[str, Any] = Field(description="The task's config as run: serviceId is the model that served it.")
    output: list[dict[str, Any]] | None = Field(
        description="One entry per input item: {source, target} (asr: {source} = the transcript; diagnose and "
                    "describe: {source: null, target}). Null for tts.")
    audio: list[dict[str, Any]] | None = Field(description="tts only: [{audioContent: base64, audioUri: null}].")
    timingMs: float = Field(description="Wall time of this task, all input items, in milliseconds.")


class PipelineResponse(BaseModel):
    pipelineResponse: list[TaskResponse]
    timingMs: float
