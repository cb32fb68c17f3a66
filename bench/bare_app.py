"""The baseline for bench/gateway_overhead.py: the least a FastAPI app can do to answer like `echo`.

POST /v1/chat/completions parses the JSON body and returns the chat.completion object that
Kaset's `echo` model returns (the last user message echoed back, same keys, same usage
counting), with no auth, no validation model, no middleware and no thread hop. It runs under
uvicorn exactly as `kaset serve` does: loop=uvloop, http=httptools, access_log off.

    .venv/bin/python bench/bare_app.py --port 8001
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI(title="bare baseline")


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> JSONResponse:
    body: dict[str, Any] = await request.json()
    messages: list[dict[str, Any]] = body.get("messages") or []
    text = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    prompt_tokens = sum(len((m.get("content") or "").split()) for m in messages)
    completion_tokens = len(text.split())
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": None,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop", http="httptools",
                access_log=False)


if __name__ == "__main__":
    main()
