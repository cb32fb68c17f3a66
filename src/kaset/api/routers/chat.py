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
from kaset.api.serving.chat_images import chat_about_images, chat_with_vision_model, image_urls
from kaset.api.serving.chat_messages import deterministic, last_user_text, stops, to_messages
from kaset.api.serving.chat_params import (
    chat_generation_params,
    chat_needs,
    check_chat_fields,
    check_completion_fields,
    refuse_needs,
    require,
)
from kaset.api.serving.chat_stream import ChatReply, CompletionChunks, sse_response, usage_of
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.ids import new_id
from kaset.language import written_language
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import caller_key
from kaset.runtimes.base import Generation, GenerationParams
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
    check_chat_fields(body)
    params = chat_generation_params(body)
    needs = chat_needs(body)
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
            return await sse_response(model.chat_stream(messages, params), reply.chunks(), reply.include_usage,
                                 routing.headers(body.model, model.spec), voice)

        streamed, _ = await routing.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> Generation:
        await require(model, needs)
        return await model.chat(to_messages(body, settings.max_text_chars), params)

    result, spec = await routing.call(body.model, "chat", run, caller=caller, retry=deterministic(params))
    return await reply.respond(result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens,
                               headers=routing.headers(body.model, spec))


@policy(budgets=("tokens_per_day",), model_field=True)
@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request, routing: RouterDep,
                      settings: SettingsDep) -> Response:
    check_completion_fields(body)
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
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                              stop=stops(body.stop), seed=body.seed)
    completion_id = f"cmpl-{new_id()}"
    created = int(time.time())

    def caller() -> str | None:
        return caller_key(request)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = CompletionChunks(completion_id, created, body.model)

        async def stream(model: ModelHandle) -> StreamingResponse:
            return await sse_response(model.complete_stream(prompt, params), chunks, include_usage,
                                 routing.headers(body.model, model.spec))

        streamed, _ = await routing.call(body.model, "chat", stream, caller=caller)
        return streamed

    async def run(model: ModelHandle) -> Generation:
        return await model.complete(prompt, params)

    result, spec = await routing.call(body.model, "chat", run, caller=caller, retry=deterministic(params))
    text = prompt + result.text if body.echo else result.text
    response = Completion(
        id=completion_id, created=created, model=body.model,
        choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)],
        usage=usage_of(result.prompt_tokens, result.completion_tokens),
    )
    return json_response(response, headers=routing.headers(body.model, spec))
