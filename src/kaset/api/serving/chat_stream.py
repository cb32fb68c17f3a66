"""Chat and completion replies: SSE chunks, usage, and a streamed reply spoken sentence by sentence."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi.responses import Response, StreamingResponse

from kaset.api.responses import json_response
from kaset.api.schemas.chat import AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, Usage
from kaset.api.serving.chat_audio import ReplyVoice
from kaset.api.serving.chat_choices import chat_logprobs, choices_tokens, completion_logprobs
from kaset.api.streaming import primed
from kaset.errors import KasetError
from kaset.pipelines.speaking import Spoken, Written, speak_while_writing
from kaset.pipelines.speech import split_sentences
from kaset.runtimes.base import Generation, GenerationChunk, TokenLogprob
from kaset.usage import record as record_usage


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def stream_sse(
    chunks: AsyncIterator[GenerationChunk], make_payload: Any, include_usage: bool, voice: ReplyVoice | None = None,
) -> AsyncIterator[bytes]:
    # Each choice's last chunk has its counts (n > 1: several): the prompt counts once, as OpenAI counts it.
    prompt_tokens = completion_tokens = finished = 0
    try:
        if voice is not None:
            async for payload in _spoken_stream(chunks, make_payload, include_usage, voice):
                yield _sse(payload)
        else:
            async for chunk in chunks:
                for payload in make_payload(chunk):
                    yield _sse(payload)
                if chunk.finish_reason is not None:
                    finished += 1
                    prompt_tokens = max(prompt_tokens, chunk.prompt_tokens)
                    completion_tokens += chunk.completion_tokens
            if finished:
                usage = usage_of(prompt_tokens, completion_tokens)  # also records the tokens
                if include_usage:
                    yield _sse({**make_payload.base, "choices": [], "usage": usage.model_dump()})
    except KasetError as exc:
        if finished:
            usage_of(prompt_tokens, completion_tokens)  # the choices that were sent are still counted
        # Headers are gone already: report the error in-band, as OpenAI does.
        yield _sse(exc.envelope())
    yield b"data: [DONE]\n\n"


class ChatChunks:
    def __init__(self, completion_id: str, created: int, model: str, audio_id: str | None = None,
                 logprobs: bool = False) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.first = True
        # Set when the reply is spoken: its text then streams as `delta.audio.transcript`, as OpenAI's does.
        self.audio_id = audio_id
        self.logprobs = logprobs
        self.index = 0  # the choice the chunks are of (n > 1: chat_choices.stream_choices moves it on)

    def start_choice(self, index: int) -> None:
        self.index, self.first = index, True

    def __call__(self, chunk: GenerationChunk) -> Iterator[dict[str, Any]]:
        yield from self.text(chunk.text, chunk.logprobs)
        if chunk.finish_reason is not None:
            yield self.finish(chunk.finish_reason)

    def text(self, text: str, logprobs: list[TokenLogprob] | None = None) -> Iterator[dict[str, Any]]:
        if self.first:
            self.first = False
            yield self._delta({"role": "assistant", "content": None if self.audio_id else ""})
        if text:
            payload = self._delta({"content": None, "audio": {"id": self.audio_id, "transcript": text}}
                                  if self.audio_id else {"content": text})
            if self.logprobs:
                payload["choices"][0]["logprobs"] = chat_logprobs(logprobs)
            yield payload

    def audio(self, data: bytes, expires_at: int) -> dict[str, Any]:
        return self._delta({"audio": {"id": self.audio_id, "data": base64.b64encode(data).decode("ascii"),
                                      "expires_at": expires_at}})

    def finish(self, reason: str) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": self.index, "delta": {}, "finish_reason": reason}]}

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": self.index, "delta": delta, "finish_reason": None}]}


class CompletionChunks:
    def __init__(self, completion_id: str, created: int, model: str, logprobs: bool = False,
                 echo: str = "") -> None:
        self.base = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
        self.logprobs = logprobs
        self.index = 0
        # With `echo`, each choice's text starts with the prompt.
        self.echo = self.unsent = echo

    def start_choice(self, index: int) -> None:
        self.index, self.unsent = index, self.echo

    def __call__(self, chunk: GenerationChunk) -> Iterator[dict[str, Any]]:
        text = chunk.text
        if self.unsent:
            text, self.unsent = self.unsent + text, ""
        if text or chunk.finish_reason is not None:
            logprobs = completion_logprobs(chunk.logprobs) if self.logprobs and chunk.logprobs is not None else None
            yield {**self.base, "choices": [{"index": self.index, "text": text,
                                             "finish_reason": chunk.finish_reason, "logprobs": logprobs}]}


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    # Every reply's token counts pass here exactly once: count them for the request log and metrics.
    record_usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


async def sse_response(generated: AsyncIterator[GenerationChunk], payloads: ChatChunks | CompletionChunks,
                  include_usage: bool, headers: dict[str, str], voice: ReplyVoice | None = None) -> StreamingResponse:
    # Waits for the first chunk: until then a route may still fall back to another model.
    chunks = await primed(generated)
    return StreamingResponse(stream_sse(chunks, payloads, include_usage, voice), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


async def _spoken_stream(chunks: AsyncIterator[GenerationChunk], payloads: ChatChunks, include_usage: bool,
                         voice: ReplyVoice) -> AsyncIterator[dict[str, Any]]:
    """The reply's transcript deltas as they are generated and, as each sentence is complete,
    its pcm16 audio delta (kaset.pipelines.speaking: the text never waits for the voice); the
    finish and usage chunks come after the last audio."""
    final: list[GenerationChunk] = []
    said: list[str] = []
    buffer = [""]

    def cut(chunk: GenerationChunk) -> list[str]:
        buffer[0] += chunk.text
        pieces = split_sentences(buffer[0])
        if len(pieces) < 2:
            return []  # the last piece may still grow: kept whole, spaces included
        buffer[0] = pieces[-1]
        return pieces[:-1]

    def rest() -> list[str]:
        return [buffer[0].strip()] if buffer[0].strip() else []

    async for event in speak_while_writing(chunks, cut, rest, voice.speak):
        if isinstance(event, Written):
            chunk = event.item
            for payload in payloads.text(chunk.text):
                yield payload
            said.append(chunk.text)
            if chunk.finish_reason is not None:
                final.append(chunk)
        elif isinstance(event, Spoken):
            yield payloads.audio(event.audio, voice.expires_at)
    await voice.spoken_replies.remember(voice.audio_id, "".join(said), voice.expires_at)
    last = final[-1] if final else GenerationChunk(text="", finish_reason="stop")
    yield payloads.finish(last.finish_reason or "stop")
    usage = usage_of(last.prompt_tokens, last.completion_tokens)
    if include_usage:
        yield {**payloads.base, "choices": [], "usage": usage.model_dump()}


class ChatReply:
    """The ids of one chat completion, and how to answer it plainly or as a stream, spoken or not."""

    def __init__(self, body: ChatCompletionRequest, completion_id: str, created: int,
                 voice: ReplyVoice | None = None) -> None:
        self.body = body
        self.completion_id = completion_id
        self.created = created
        self.voice = voice

    def chunks(self) -> ChatChunks:
        return ChatChunks(self.completion_id, self.created, self.body.model,
                          self.voice.audio_id if self.voice else None, logprobs=bool(self.body.logprobs))

    @property
    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    async def respond(self, text: str, finish_reason: Literal["stop", "length"], prompt_tokens: int,
                      completion_tokens: int, headers: dict[str, str]) -> Response:
        return await self.respond_all([Generation(text, finish_reason, prompt_tokens, completion_tokens)], headers)

    async def respond_all(self, results: list[Generation], headers: dict[str, str]) -> Response:
        """The reply with one choice per generation (n); a spoken reply is one choice."""
        if self.voice is not None:
            # OpenAI's shape: the text is the audio's transcript, content is null.
            message = AssistantMessage(content=None, audio=await self.voice.whole(results[0].text))
            choices = [ChatChoice(message=message, finish_reason=results[0].finish_reason)]
        else:
            logprobs = bool(self.body.logprobs)
            choices = [ChatChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason,
                                  logprobs=chat_logprobs(r.logprobs) if logprobs else None)
                       for i, r in enumerate(results)]
        response = ChatCompletion(id=self.completion_id, created=self.created, model=self.body.model,
                                  choices=choices, usage=usage_of(*choices_tokens(results)))
        return json_response(response, headers=headers)
