"""The crop doctor (Kaset's own API): photo and/or question in, diagnosis, advice and speech out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kaset.api.schemas.advice import AdviceResponse
from kaset.api.schemas.diagnose import DiagnoseResponse
from kaset.api.schemas.voice import VoiceAudio, VoiceNotice


class CropDoctorJSONRequest(BaseModel):
    """The JSON form of the request; a multipart form carries the same fields (photo and audio as files)."""

    image: str | None = Field(default=None, description="The photo as base64 or a data URL.")
    audio: str | None = Field(default=None, description="The spoken question (wav, mp3, webm, ogg, m4a, flac) as "
                                                        "base64 or a data URL.")
    question: str | None = Field(default=None, max_length=2000, description="The typed question, Thai or English.")
    language: Literal["en", "th", "auto"] = Field(
        default="auto", description="Answer language; 'auto': the question's or transcript's, else Thai.")
    crop: str | None = Field(default=None, description="mango, rice, cassava or durian; inferred from the photo "
                                                       "models if omitted.")
    speak: bool = Field(default=True, description="Also answer with speech (when a voice speaks the language).")
    voice: str | None = None
    response_format: Literal["wav", "mp3"] = "wav"
    compare: bool = Field(default=False, description="Run every model for the crop, for the comparison view.")
    rephrase: bool = Field(default=False, description="Let the local LLM rephrase the curated advice (slower; the "
                           "rewrite is checked against the curated text and dropped if it adds anything).")


class CropDoctorTimings(BaseModel):
    transcribe_ms: float | None
    diagnose_ms: float | None
    advice_ms: float | None
    speech_ms: float | None
    total_ms: float


class CropDoctorResponse(BaseModel):
    language: Literal["en", "th"]
    question: str | None
    transcript: str | None
    diagnosis: DiagnoseResponse | None
    advice: AdviceResponse | None
    answer: str = Field(description="What to show and speak, in `language`.")
    audio: VoiceAudio | None
    notices: list[VoiceNotice]
    understood: bool = Field(default=True, description="False: the spoken question was not understood (notice "
                             "`not_understood`): the answer asks to say it again, and nothing in it comes from that "
                             "speech (a photo sent with it is still diagnosed).")
    timings: CropDoctorTimings
