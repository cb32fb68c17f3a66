"""The voice assistant: POST /v1/voice/ask and the /v1/voice/stream WebSocket's messages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kaset.api.schemas.advice import Citation


class VoiceAudio(BaseModel):
    format: str
    data: str = Field(description="The answer's speech, base64.")
    seconds: float
    model: str
    voice: str | None


class VoiceNotice(BaseModel):
    code: str = Field(description="'no_voice': no installed voice speaks the answer's language (text only); "
                                  "'assistant_language': the assistant model does not write the language, "
                                  "so the crop advisor answered.")
    message: str


class VoiceModels(BaseModel):
    transcribe: str
    answer: str | None
    speech: str | None


class VoiceTimings(BaseModel):
    transcribe_ms: float
    answer_ms: float = Field(description="From the transcript to the whole answer's text.")
    first_audio_ms: float | None = Field(description="From the request's start to the first sentence's speech.")
    total_ms: float


class VoiceAskResponse(BaseModel):
    transcript: str
    language: Literal["en", "th"]
    answer: str
    sentences: list[str]
    audio: VoiceAudio | None
    notices: list[VoiceNotice]
    path: Literal["llm", "curated", "assistant"]
    understood: bool = Field(default=True, description="False: the spoken question was not understood; the answer "
                             "only asks to say it again (notice `not_understood`) and nothing was advised from it.")
    citations: list[Citation]
    models: VoiceModels
    timings: VoiceTimings


class StreamStart(BaseModel):
    """The first message of each question on /v1/voice/stream."""

    type: Literal["start"]
    mode: Literal["assistant", "advice", "transcribe"] = "advice"
    language: Literal["en", "th", "auto"] = "auto"
    voice: str | None = None
    response_format: Literal["wav", "mp3", "opus"] = "wav"
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    crop: str | None = None
    # What the speech is about: "crops" hears the names of crops and their problems better
    # (kaset.pipelines.vocabulary). Advice mode and a chosen crop imply it.
    topic: Literal["crops"] | None = None
