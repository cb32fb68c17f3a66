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
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False
    # OpenAI pads streamed chunks against side channels unless this is false; Kaset never pads, so
    # either value is honoured.
    include_obfuscation: bool | None = None


# At most this many choices (`n`) per request: each is generated in turn on a local model.
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the reply must follow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # The reply is constrained to the schema either way (a llama.cpp grammar); a provider gets it as sent.
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


# OpenAI's output formats for chat audio; pcm16 is raw 24 kHz mono s16le, the only one a stream takes.
ChatAudioFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]


class AudioOutput(BaseModel):
    """`audio` of a request whose `modalities` include "audio": how to speak the reply."""

    voice: str = Field(min_length=1, description="A voice of the speech model; OpenAI's names (alloy, ...) "
                                                 "mean the default voice for the reply's language.")
    format: ChatAudioFormat = "wav"


class _SamplingFields(BaseModel):
    """What chat and text completions share. Each field OpenAI defines is either honoured,
    accepted because it cannot change the reply, or refused with a 400 naming it
    (kaset.api.serving.chat_params decides which, and docs/api.md lists them). Only the honoured
    ones are declared here: every declared field costs each request's validation, and the others
    (`metadata`, `store`, `tools`, `logit_bias`...) arrive in `model_extra`, where chat_params
    looks at them by name. Fields OpenAI does not define are refused there too, as OpenAI refuses
    them ("Unrecognized request argument")."""

    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Accepted: it identifies the caller at OpenAI and changes nothing in the reply.
    user: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    # As in speaches: the models that hear input_audio parts and speak the reply. Default: the
    # server's choice by language (kaset.pipelines.speech).
    transcription_model: str | None = None
    speech_model: str | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    # The legacy shape: the number of top tokens to return with each token (OpenAI allows 0-5).
    logprobs: int | None = Field(default=None, ge=0, le=5)


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
