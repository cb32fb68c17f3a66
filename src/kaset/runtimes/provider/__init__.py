"""What every external-provider runtime shares: its HTTP client, its key, its error mapping.

A provider runtime is a runtime whose "weights" are somebody else's server: a `ChatModel`
for OpenAI-compatible servers and Gemini (`ProviderRuntime`), speech and translation for
AI4Thai (`kaset.runtimes.ai4thai`), image classification by an Open Inference Protocol server
(`kaset.runtimes.oip_v2`). The engines themselves are modules of `kaset.runtimes`; this package
is what they are built on:

- `client`: `ProviderClient`, the HTTP plumbing, independent of the task: one aiohttp session
  per calling event loop (aiohttp is the project's client for gateway-to-upstream hops, and a
  `ClientSession` belongs to one loop), the key, the requests (`_open`, `_post_json`,
  `_post_sse`).
- `http1`: the shortcut of a plain chat call to an http:// upstream (vLLM, Ollama): the same
  POST written straight onto a kept-alive connection, a quarter of the gateway's CPU per call
  less than through aiohttp, with the same bytes and the same outcomes.
- `errors`: `UpstreamErrorMapping`, the upstream's failures as KasetErrors whose class says
  whose fault it is, with the key scrubbed out of every text.
- `loop_thread`: the runtime's own event loop thread, for the blocking path.
- `chat`: `ProviderRuntime`, the chat contract on top of the client.
- `oip_wire`: the Open Inference Protocol's binary tensor format, which `oip_v2` speaks.

Two ways in, one implementation. Every entry point exists as a coroutine (`achat`,
`aclassify`, ...), and the blocking methods of the contracts (`chat`, `classify`, ...) run
those very coroutines; request building, reply parsing and error mapping exist once.

- The async methods (`async_native` is true) run on the *caller's* event loop: the gateway's,
  with no thread hop at all. A provider call is waiting on a socket, and an event loop is the
  cheapest place to wait; the runtime does no CPU work worth a thread. Going through the
  blocking path instead cost two thread hops per call (the model's executor, then the loop
  thread): measured +1.13 ms p50 and 16% of the upstream's requests/s at 16 connections,
  against +0.70 ms and 31% on the caller's loop (docs/benchmarks.md, "Provider models").
- The blocking methods are for callers that have no event loop (Celery job workers, scripts,
  the model manager's executor path for runtimes that are not async-native). For them, the
  runtime owns one small event loop on a daemon thread, started by `load()`
  (`loop_thread`). The model manager's executor threads carry no tracing context, which is
  one more reason the manager awaits these runtimes' async methods on the loop instead.
"""

from kaset.runtimes.provider.chat import (
    Messages,
    ProviderRuntime,
    VisionChat,
    finish_reason,
    has_images,
    jpeg_data_url,
)
from kaset.runtimes.provider.client import ProviderClient, sse_data
from kaset.runtimes.provider.errors import UpstreamErrorInfo, UpstreamErrorMapping, retry_after_header

__all__ = [
    "Messages",
    "ProviderClient",
    "ProviderRuntime",
    "UpstreamErrorInfo",
    "UpstreamErrorMapping",
    "VisionChat",
    "finish_reason",
    "has_images",
    "jpeg_data_url",
    "retry_after_header",
    "sse_data",
]
