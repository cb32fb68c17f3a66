"""Audio types, mirroring OpenAI's API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class SpeechRequest(BaseModel):
    model: str
    input: str
    voice: str | None = None
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    # Kaset extension (as in speaches): send audio as each sentence is ready.
    stream: bool = False
    instructions: str | None = None


class Transcription(BaseModel):
    text: str


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = None


class TranscriptionSegment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class VerboseTranscription(BaseModel):
    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    words: list[TranscriptionWord] | None = None


class VoiceObject(BaseModel):
    """A voice a speech model speaks with (Kaset extension; OpenAI has no voice list)."""

    object: Literal["voice"] = "voice"
    id: str = Field(description="What to send as `voice` to /v1/audio/speech with this model.")
    model: str
    language: str = Field(description="BCP 47 tag, e.g. en-us.")
    name: str
    default: bool = Field(description="The voice used when a request names none.")


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]
