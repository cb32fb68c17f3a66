"""POST /v1/embeddings."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from kaset import usage
from kaset.api.deps import RouterDep, SettingsDep, require_json
from kaset.api.policy import policy
from kaset.api.responses import json_response
from kaset.api.schemas.embeddings import EmbeddingItem, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import caller_key
from kaset.runtimes.base import Embeddings

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_json)])


def _texts(body: EmbeddingRequest, max_inputs: int, max_chars: int) -> list[str]:
    if isinstance(body.input, str):
        texts = [body.input]
    elif all(isinstance(item, str) for item in body.input):
        texts = [str(item) for item in body.input]
    else:
        raise InvalidRequest("Token-id input is not supported; send strings.", param="input")
    if not texts:
        raise InvalidRequest("'input' is empty; send a string or a list of strings.", param="input")
    if len(texts) > max_inputs:
        raise PayloadTooLarge(f"{len(texts)} inputs in one request; the limit is {max_inputs}.", param="input")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"input[{index}] is empty; every input needs some text.", param="input")
        if len(text) > max_chars:
            raise PayloadTooLarge(f"input[{index}] has {len(text)} characters; the limit is {max_chars}.",
                                  param="input")
    return texts


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@policy(budgets=("tokens_per_day",), model_field=True)
@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request, routing: RouterDep,
                            settings: SettingsDep) -> Response:
    texts = _texts(body, settings.max_embedding_inputs, settings.max_text_chars)

    async def embed(model: ModelHandle) -> list[Embeddings]:
        if body.dimensions is not None:
            dimensions = (await model.info()).dimensions
            if body.dimensions > dimensions:
                raise InvalidRequest(f"This model has {dimensions} dimensions; cannot return {body.dimensions}.",
                                     param="dimensions")
        # Per-text results, possibly from one call shared with concurrent requests.
        return await model.embed_each(texts)

    # Embedding is idempotent: a route's retries apply.
    per_text, spec = await routing.call(body.model, "embed", embed, caller=lambda: caller_key(request), retry=True)
    vectors = np.concatenate([e.vectors for e in per_text])
    prompt_tokens = sum(e.prompt_tokens for e in per_text)
    usage.record(prompt_tokens=prompt_tokens)
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:
        # Matryoshka-style truncation, renormalised, as OpenAI does for `dimensions`.
        vectors = vectors[:, : body.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    response = EmbeddingResponse(
        data=[EmbeddingItem(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(vectors)],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
    return json_response(response, headers=routing.headers(body.model, spec))
