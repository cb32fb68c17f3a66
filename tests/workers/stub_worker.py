"""A stand-in worker for fault tests: answers a gateway's model handles like a worker's task
API (echo's chat stream and embeddings), but can be slow, hang, die mid-stream or stay
unready. `python -m tests.workers.stub_worker --port N [--delay S] [--unready]`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

HITS: list[dict[str, str]] = []


def make_app(models: list[str], delay_s: float, ready: bool, die_mid_stream: bool = False) -> FastAPI:
    app = FastAPI()

    @app.get("/health/ready")
    async def health_ready() -> JSONResponse:
        return JSONResponse({"status": "ready" if ready else "loading", "models": dict.fromkeys(models, "loaded")},
                            status_code=200 if ready else 503)

    @app.get("/stub/hits")
    async def hits() -> list[dict[str, str]]:
        return HITS

    # The worker's internal task API (kaset.workers.wire), as a gateway's model handles call it.
    @app.get("/internal/v1/models/{name}/info")
    async def info(name: str) -> JSONResponse:
        return JSONResponse({"dimensions": 3})

    @app.post("/internal/v1/models/{name}/{method}")
    async def model_call(name: str, method: str, request: Request) -> Response:
        HITS.append(dict(request.headers))
        await asyncio.sleep(delay_s)
        if method == "chat_stream":
            async def lines() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield json.dumps({"text": f"n{i} "}).encode() + b"\n"
                    await asyncio.sleep(0.1)
                if die_mid_stream:
                    os._exit(1)  # the worker dies in the middle of the stream
                yield json.dumps({"text": "", "finish_reason": "stop"}).encode() + b"\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        if method == "embed_each":
            body: dict[str, Any] = await request.json()
            vector = {"dtype": "float32", "shape": [1, 3],
                      "data": base64.b64encode(np.full((1, 3), 7.0, np.float32).tobytes()).decode()}
            return JSONResponse({"items": [{"vectors": vector, "prompt_tokens": 1} for _ in body["texts"]]})
        return JSONResponse({"error": {"message": f"The stub does not do {method}.", "type": "invalid_request_error",
                                       "param": None, "code": None}}, status_code=400)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="echo")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--unready", action="store_true")
    parser.add_argument("--die-mid-stream", action="store_true")
    args = parser.parse_args()
    app = make_app(args.models.split(","), args.delay, not args.unready, args.die_mid_stream)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
