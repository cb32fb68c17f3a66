"""How model calls cross from a gateway to a kaset worker (the internal task API).

One route per handle method, `POST /internal/v1/models/{model}/{method}`, plus
`GET /internal/v1/models/{model}/info`. Arguments and results are JSON; arrays travel as
base64 of their raw bytes with dtype and shape (images as uint8, probabilities and vectors as
float32). Audio for `transcribe` is the request body itself, 16-bit PCM (half of float32's
size: a 30-minute job is 58 MB), its options in the `x-kaset-options` header. `synthesize`
answers raw 16-bit PCM (`synthesize_stream` as it is spoken), the `*_stream` generations one JSON
object per line, ending in an error object if
the generation failed after it started. Errors are the OpenAI error envelope with the status
the worker would give a client, so the gateway re-raises the same error.

Why not the OpenAI routes themselves: they would make the gateway encode and the worker decode
media (and a worker redo the request's validation) on every call; a handle call carries exactly
what the engine takes.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np

from kaset.errors import InvalidRequest
from kaset.registry.handle import ModelInfo
from kaset.runtimes.base import (
    Embeddings,
    Generation,
    GenerationChunk,
    GenerationParams,
    Segment,
    TokenLogprob,
    TopLogprob,
    TranscribeOptions,
    Transcription,
    Voice,
    Word,
)

PREFIX = "/internal/v1/models"
OPTIONS_HEADER = "x-kaset-options"
METHODS = frozenset({"transcribe", "synthesize", "synthesize_stream", "translate", "chat", "chat_stream",
                     "complete", "complete_stream", "chat_parts", "chat_parts_stream", "embed", "embed_each",
                     "classify", "describe_image"})
_DTYPES = frozenset({"uint8", "float32", "int16"})


def array_out(array: np.ndarray) -> dict[str, Any]:
    contiguous = np.ascontiguousarray(array)
    return {"dtype": str(contiguous.dtype), "shape": list(contiguous.shape),
            "data": base64.b64encode(contiguous.tobytes()).decode("ascii")}


def array_in(value: Any, what: str) -> np.ndarray:
    try:
        dtype, shape = str(value["dtype"]), [int(n) for n in value["shape"]]
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype}")
        return np.frombuffer(base64.b64decode(value["data"], validate=True), dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"'{what}' is not an encoded array ({exc}).", param=what) from None


def pcm16_out(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm16_in(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise InvalidRequest("The audio is not whole 16-bit samples.", param="audio")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def params_out(params: GenerationParams) -> dict[str, Any]:
    return dataclasses.asdict(params)


def params_in(value: Any) -> GenerationParams:
    try:
        return GenerationParams(**value)
    except TypeError as exc:
        raise InvalidRequest(f"Bad generation parameters: {exc}.", param="params") from None


def options_in(value: Any) -> TranscribeOptions:
    try:
        return TranscribeOptions(**value)
    except TypeError as exc:
        raise InvalidRequest(f"Bad transcription options: {exc}.", param="options") from None


def transcription_in(value: dict[str, Any]) -> Transcription:
    segments = []
    for raw in value["segments"]:
        words = [Word(**w) for w in raw["words"]] if raw.get("words") is not None else None
        segments.append(Segment(**{**raw, "words": words}))
    return Transcription(text=value["text"], language=value["language"], duration=value["duration"],
                         segments=segments)


def embeddings_out(result: Embeddings) -> dict[str, Any]:
    return {"vectors": array_out(result.vectors.astype(np.float32)), "prompt_tokens": result.prompt_tokens,
            "token_counts": result.token_counts}


def embeddings_in(value: dict[str, Any]) -> Embeddings:
    return Embeddings(vectors=array_in(value["vectors"], "vectors"), prompt_tokens=int(value["prompt_tokens"]),
                      token_counts=value.get("token_counts"))


def generation_in(value: dict[str, Any]) -> Generation:
    if value.get("logprobs") is not None:
        value = {**value, "logprobs": logprobs_in(value["logprobs"])}
    return Generation(**value)


def chunk_in(value: dict[str, Any]) -> GenerationChunk:
    if value.get("logprobs") is not None:
        value = {**value, "logprobs": logprobs_in(value["logprobs"])}
    return GenerationChunk(**value)


def logprobs_in(values: list[dict[str, Any]]) -> list[TokenLogprob]:
    return [TokenLogprob(**{**value, "top_logprobs": [TopLogprob(**top) for top in value["top_logprobs"]]})
            for value in values]


def info_out(info: ModelInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def info_in(value: dict[str, Any]) -> ModelInfo:
    return ModelInfo(**{**value, "voices": [Voice(**v) for v in value.get("voices", [])],
                        "pairs": [(str(s), str(t)) for s, t in value.get("pairs", [])]})
