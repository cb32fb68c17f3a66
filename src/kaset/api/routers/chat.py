"""POST /v1/chat/completions and /v1/completions (plain and SSE streaming): HTTP only; the
logic is in kaset.api.serving.chat_*."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from kaset.api.deps import (
    RouterDep,
    SettingsDep,
    get_describer,
    get_speech,
    get_spoken_replies,
    require_json,
    uses_state,
)
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
)
from kaset.api.serving.chat_audio import hear_audio_parts, recall_spoken_replies, voice_for
from kaset.api.serving.chat_choices import choices_tokens, completion_logprobs, generate_choices, stream_choices
from kaset.api.serving.chat_images import chat_about_images, chat_with_vision_model, image_urls
from kaset.api.serving.chat_messages import deterministic, last_user_text, to_messages
from kaset.api.serving.chat_params import prepare_chat, prepare_completion, refuse_needs, require
from kaset.api.serving.chat_stream import ChatReply, CompletionChunks, sse_response, usage_of
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.ids import new_id
from kaset.language import written_language
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import caller_key
from kaset.runtimes.base import Generation
from kaset.usage import record as record_usage

router = APIRouter(tags=["chat"], dependencies=[Depends(require_json)])


@policy(budgets=("tokens_per_day", "images_per_day"), model_field=True)
@router.post("/v1/chat/completions", response_model=ChatCompletion)
@uses_state(get_speech, get_spoken_replies, get_describer)  # awaited only by requests with audio or images
async def chat_completions(
    body: ChatCompletionRequest, request: Request, routing: RouterDep, settings: SettingsDep
) -> Response:
    """The JSON's `model` is the name the client asked for (OpenAI clients expect it back); the
    x-kaset-model header names the model that served (a route's target or fallback)."""
    params, needs = prepare_chat(body)
    completion_id = f"chatcmpl-{new_id()}"
    created = int(time.time())

    def caller() -> str | None:
        return caller_key(request)

    voice = await voice_for(body, request, caller)
    await hear_audio_parts(body, request, settings, caller)
    await recall_spoken_replies(body, request)
    if voice is not None:
        # Fail before generating when nothing can speak the language the reply will likely be in.
        voice.language = written_language(last_user_text(body))
        voice.check()
    reply = ChatReply(body, completion_id, created, voice)
    images = image_urls(body)
    if images:
        record_usage(images=len(images))

        if body.n > 1:
            raise InvalidRequest("n > 1 is not supported for messages with images yet: send n: 1.", param="n")

        async def with_images(model: ModelHandle) -> Response:
            if (await model.info()).vision:
                await require(model, needs)
                return await chat_with_vision_model(body, model, params, reply, settings, routing)
            refuse_needs(needs, f"The model '{model.name}' cannot see images, so the photo is answered with its "
                                "description")
            return await chat_about_images(body, images, reply, settings, await get_describer(request))

        answered, _ = await routing.call(body.model, "chat", with_images, caller=caller)
        return answered
    if body.stream:
        async def stream(model: ModelHandle) -> StreamingResponse:
            await require(model, needs)
            messages = to_messages(body, settings.max_text_chars)
            payloads = reply.chunks()
            generated = model.chat_stream(messages, params) if body.n == 1 else stream_choices(
                lambda choice: model.chat_stream(messages, choice), params, body.n, payloads.start_choice)
            return await sse_response(generated, payloads, reply.include_usage, routing.headers(body.model, model.spec),
                                      voice)

        streamed, _ = await routing.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> list[Generation]:
        await require(model, needs)
        messages = to_messages(body, settings.max_text_chars)
        return await generate_choices(lambda choice: model.chat(messages, choice), params, body.n)

    results, spec = await routing.call(body.model, "chat", run, caller=caller, retry=deterministic(params))
    return await reply.respond_all(results, headers=routing.headers(body.model, spec))


@policy(budgets=("tokens_per_day",), model_field=True)
@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, routing: RouterDep,
                      settings: SettingsDep) -> Response:
    params, needs = prepare_completion(body)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidRequest("Send one prompt per request.", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    if len(prompt) > settings.max_text_chars:
        raise PayloadTooLarge(
            f"The prompt holds {len(prompt)} characters; this server accepts at most {settings.max_text_chars}.",
            param="prompt",
        )
    completion_id = f"cmpl-{new_id()}"
    created = int(time.time())

    def caller() -> str | None:
        return caller_key(request)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = CompletionChunks(completion_id, created, body.model, logprobs=params.logprobs,
                                  echo=prompt if body.echo else "")

        async def stream(model: ModelHandle) -> StreamingResponse:
            await require(model, needs)
            generated = model.complete_stream(prompt, params) if body.n == 1 else stream_choices(
                lambda choice: model.complete_stream(prompt, choice), params, body.n, chunks.start_choice)
            return await sse_response(generated, chunks, include_usage, routing.headers(body.model, model.spec))

        streamed, _ = await routing.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> list[Generation]:
        await require(model, needs)
        return await generate_choices(lambda choice: model.complete(prompt, choice), params, body.n)

    results, spec = await routing.call(body.model, "chat", run, caller=caller, retry=deterministic(params))
    echoed = prompt if body.echo else ""
    response = Completion(
        id=completion_id, created=created, model=body.model,
        choices=[CompletionChoice(index=i, text=echoed + r.text, finish_reason=r.finish_reason,
                                  logprobs=completion_logprobs(r.logprobs) if params.logprobs else None)
                 for i, r in enumerate(results)],
        usage=usage_of(*choices_tokens(results)),
    )
    return json_response(response, headers=routing.headers(body.model, spec))
