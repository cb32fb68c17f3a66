"""A stand-in worker for fault tests: answers like a worker, but can be slow, hang or stay
unready. `python -m tests.workers.stub_worker --port N [--delay S] [--unready]`."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

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

    @app.post("/v1/embeddings")
    @app.post("/v1/chat/completions")
    async def model_call(request: Request) -> Response:
        HITS.append(dict(request.headers))
        await asyncio.sleep(delay_s)
        body: dict[str, Any] = await request.json()
        if body.get("stream") and die_mid_stream:
            async def events() -> AsyncIterator[bytes]:
                for i in range(3):
                    yield f'data: {{"n": {i}}}\n\n'.encode()
                    await asyncio.sleep(0.1)
                os._exit(1)  # the worker dies in the middle of the stream

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({"object": "stub", "model": body.get("model")})

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
