"""Chat and text completion types, mirroring OpenAI's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI's output formats for chat audio; pcm16 is raw 24 kHz mono s16le, the only one a stream takes.
ChatAudioFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]


class AudioOutput(BaseModel):
    """`audio` of a request whose `modalities` include "audio": how to speak the reply."""

    voice: str = Field(min_length=1, description="A voice of the speech model; OpenAI's names (alloy, ...) "
                                                 "mean the default voice for the reply's language.")
    format: ChatAudioFormat = "wav"


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    # As in speaches: the models that hear input_audio parts and speak the reply. Default: the
    # server's choice by language (kaset.pipelines.speech).
    transcription_model: str | None = None
    speech_model: str | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[str]
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=16, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionAudio(BaseModel):
    """The spoken reply, in OpenAI's shape. `id` lets a later request refer to it (an assistant
    message `{"audio": {"id": ...}}`) while the server remembers its transcript."""

    id: str
    data: str = Field(description="The audio, base64, in the requested format.")
    expires_at: int
    transcript: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    # None when the reply is spoken: its text is then `audio.transcript`, as with OpenAI.
    content: str | None
    audio: ChatCompletionAudio | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: Any = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: Any = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
