"""The worker's internal task API: a gateway's `RemoteHandle` calls the worker's models here
(wire format: kaset.workers.wire). Only the worker app mounts it, behind the worker token."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kaset.api.policy import PLAIN, apply_policy
from kaset.api.streaming import primed
from kaset.errors import InvalidRequest, KasetError, NotFound
from kaset.registry.loaded_model import LoadedModel
from kaset.registry.manager import ModelManager
from kaset.runtimes.base import Task
from kaset.workers import wire

log = logging.getLogger("kaset.worker")
router = APIRouter(prefix=wire.PREFIX, include_in_schema=False)

_TASK_OF: dict[str, Task] = {
    "transcribe": "transcribe", "synthesize": "synthesize", "translate": "translate", "chat": "chat",
    "chat_stream": "chat", "complete": "chat", "complete_stream": "chat", "chat_parts": "chat",
    "chat_parts_stream": "chat", "embed": "embed", "embed_each": "embed", "classify": "classify",
    "describe_image": "chat", "synthesize_stream": "synthesize",
}


def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


async def _model(request: Request, name: str, method: str) -> LoadedModel:
    task = _TASK_OF.get(method)
    if task is None:
        raise NotFound(f"No model method '{method}'; the methods are {', '.join(sorted(_TASK_OF))}.")
    return await _manager(request).get(name, task)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise InvalidRequest(f"The call's body is not JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The call's body must be a JSON object.")
    return body


@router.get("/{name}/info")
async def info(name: str, request: Request) -> JSONResponse:
    spec = _manager(request).resolve(name)
    model = await _manager(request).get(name, spec.tasks[0])
    return JSONResponse(wire.info_out(await model.info()))


@router.post("/{name}/{method}")
async def call(name: str, method: str, request: Request) -> Response:
    try:
        return await _call(name, method, request)
    except KasetError as exc:
        # The gateway's RemoteHandle re-raises it; the two flags say whose fault it was, so its
        # router counts only the server's and upstream's faults against a breaker.
        return JSONResponse(exc.envelope(faults=True), status_code=exc.status_code, headers=exc.headers)


async def _call(name: str, method: str, request: Request) -> Response:
    model = await _model(request, name, method)
    if method == "transcribe":
        options = wire.options_in(json.loads(request.headers.get(wire.OPTIONS_HEADER) or "{}"))
        result = await model.transcribe(wire.pcm16_in(await request.body()), options)
        return JSONResponse(dataclasses.asdict(result))
    body = await _json(request)
    try:
        return await _dispatch(model, method, body)
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"The call to {method} lacks or mistypes an argument ({exc}).") from None


async def _dispatch(model: LoadedModel, method: str, body: dict[str, Any]) -> Response:
    if method == "synthesize":
        pcm = await model.synthesize(str(body["text"]), body.get("voice"), float(body["speed"]))
        return Response(pcm, media_type="application/octet-stream")
    if method == "translate":
        texts = await model.translate(list(body["texts"]), str(body["source"]), str(body["target"]))
        return JSONResponse({"texts": texts})
    if method == "chat":
        generation = await model.chat(body["messages"], wire.params_in(body["params"]))
        return JSONResponse(dataclasses.asdict(generation))
    if method == "synthesize_stream":
        # Until the first piece a failure is a proper error response the gateway re-raises;
        # after it, a failure cuts the reply (raw PCM has no room for an error).
        pieces = await primed(model.synthesize_stream(str(body["text"]), body.get("voice"), float(body["speed"])))
        return StreamingResponse(pieces, media_type="application/octet-stream")
    if method == "complete":
        generation = await model.complete(str(body["prompt"]), wire.params_in(body["params"]))
        return JSONResponse(dataclasses.asdict(generation))
    if method == "chat_parts":
        generation = await model.chat_parts(body["messages"], wire.params_in(body["params"]))
        return JSONResponse(dataclasses.asdict(generation))
    if method in ("chat_stream", "complete_stream", "chat_parts_stream"):
        params = wire.params_in(body["params"])
        generated = (model.complete_stream(str(body["prompt"]), params) if method == "complete_stream"
                     else model.chat_parts_stream(body["messages"], params) if method == "chat_parts_stream"
                     else model.chat_stream(body["messages"], params))
        # Until the first chunk a failure is a proper error response the gateway re-raises.
        return StreamingResponse(_lines(await primed(generated)), media_type="application/x-ndjson")
    if method == "embed":
        return JSONResponse(wire.embeddings_out(await model.embed(list(body["texts"]))))
    if method == "embed_each":
        items = await model.embed_each(list(body["texts"]))
        return JSONResponse({"items": [wire.embeddings_out(e) for e in items]})
    if method == "classify":
        images = [wire.array_in(image, "images") for image in body["images"]]
        answers = await model.classify(images)
        return JSONResponse({"probabilities": [wire.array_out(a.astype("float32")) for a in answers]})
    # describe_image
    generation = await model.describe_image(base64.b64decode(body["image"]), str(body["prompt"]),
                                            wire.params_in(body["params"]))
    return JSONResponse(dataclasses.asdict(generation))


async def _lines(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield json.dumps(dataclasses.asdict(chunk), ensure_ascii=False).encode() + b"\n"
    except KasetError as exc:
        yield json.dumps({**exc.envelope(faults=True), "status": exc.status_code}).encode() + b"\n"
    except Exception as exc:  # the gateway reads a server error, not a cut connection
        log.exception("a streamed model call failed")
        error = KasetError(f"The model failed while generating ({type(exc).__name__}: {exc}).")
        yield json.dumps({**error.envelope(faults=True), "status": error.status_code}).encode() + b"\n"


apply_policy(router, PLAIN)
