"""What every external-provider runtime shares: its HTTP client, its key, its error mapping.

A provider runtime is a runtime whose "weights" are somebody else's server: a `ChatModel`
for OpenAI-compatible servers and Gemini (`ProviderRuntime`), speech and translation for
AI4Thai (`kaset.runtimes.ai4thai`). The HTTP plumbing below (`ProviderClient`: the sessions,
the key, the error mapping) is independent of the task; `ProviderRuntime` adds the chat
contract on top. The HTTP work is done with aiohttp (the project's client for
gateway-to-upstream hops), and an aiohttp `ClientSession` belongs to one event loop.

Two ways in, one implementation. Every chat entry point exists as a coroutine or an async
iterator (`achat`, `achat_stream`, `acomplete`, `acomplete_stream`, `achat_multimodal`,
`achat_multimodal_stream`, `adescribe_image`), and the blocking methods of the `ChatModel`
contract (`chat`, `chat_stream`, ...) run those very coroutines; request building, reply
parsing and error mapping exist once.

- The async methods (`ProviderRuntime.async_native` is true) run on the *caller's* event
  loop: the gateway's, with no thread hop at all. A provider call is waiting on a socket,
  and an event loop is the cheapest place to wait; the runtime does no CPU work worth a
  thread. Going through the blocking path instead cost two thread hops per call (the model's
  executor, then the loop thread below): measured +1.13 ms p50 and 16% of the upstream's
  requests/s at 16 connections, against +0.70 ms and 31% on the caller's loop
  (docs/benchmarks.md, "Provider models").
- The blocking methods are for callers that have no event loop (Celery job workers,
  scripts, the model manager's executor path for runtimes that are not async-native). For
  them, the runtime owns one small event loop on a daemon thread (`_LoopThread`), started by
  `load()`. A blocking method hands its coroutine to that loop and waits on the future; a
  stream runs as one task on the loop that feeds a thread-safe queue the calling thread
  reads from. The alternatives were a synchronous client in each thread (no shared
  connection pool, a second HTTP stack in the project) and a fresh loop per call
  (`asyncio.run`: a session cannot outlive its loop, so every call would pay a new TCP and
  TLS handshake).

Sessions: one per event loop that calls the runtime, made on that loop on its first request
(`_require_session`): the loop thread's for the blocking path, the gateway's for the async
path (a test's own loop, too). Each keeps its keep-alive connections for all the calls made
on its loop, and is only ever touched from its loop, so it needs no lock. `aclose()` closes
the calling loop's session; `unload()` closes every one it can reach (a loop that has
already been closed took its connections with it).

Secrets: the key comes from the environment (`api_key_env`) or a file (`api_key_file`, a
Docker or Kubernetes secret mount), never from the catalog itself, whose params may be shown
to operators. It is sent in a header only (never in a URL, which access logs record), never
logged, and scrubbed from any upstream text that reaches a client or a log line. Errors
from the upstream become KasetErrors a client can act on (see `ProviderClient._http_error`),
whose class says whose fault it is: the provider's 5xx, timeouts and unreachable servers are
breaker failures, its 429 is retryable only, and its 400/413/422 about the request's own
content are the caller's (InvalidRequest, PayloadTooLarge), never counted against it.

Tracing: every upstream call carries the W3C `traceparent` of the current span
(`kaset.tracing.inject`: the router's model-call span, nothing when the request is not
traced). A blocking call carries its calling thread's context to the loop thread
(`run_coroutine_threadsafe` copies it), so it has one when that thread has it; the model
manager's executor threads do not, which is one more reason the manager awaits these
runtimes' async methods on the loop instead.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import aiohttp
from yarl import URL

from kaset import tracing
from kaset.errors import (
    InvalidRequest,
    KasetError,
    ModelUnavailable,
    PayloadTooLarge,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from kaset.runtimes.base import ChatModel, Generation, GenerationChunk, GenerationParams, Runtime

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
# OpenAI-shaped messages whose content is a string or a list of parts (text, image_url).
Messages = list[dict[str, Any]]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONTEXT_LENGTH = 32_768
# Extra wait beyond the model's timeout before a blocked executor thread gives up on the
# loop: aiohttp's own timeouts normally fire first, this only guards against a stuck loop.
GRACE_S = 5.0
MAX_ERROR_CHARS = 300
MAX_ERROR_BODY = 64 * 1024
REDACTED = "[redacted]"
# Session closes scheduled by `unload()` on the loop that called it, kept until they finish.
_closing: set[asyncio.Task[None]] = set()


@dataclass
class UpstreamErrorInfo:
    """What a provider's error body says, parsed by the provider-specific runtime."""

    message: str = ""
    status: str = ""  # e.g. Gemini's "RESOURCE_EXHAUSTED", OpenAI's error type/code
    auth: bool = False  # the body says the key is bad, whatever the HTTP status
    retry_after: float | None = None


@runtime_checkable
class VisionChat(Protocol):
    """A chat runtime that may take images: what the describe service and the chat route look
    for. `vision` says whether this model is configured to accept them."""

    vision: bool

    def chat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation: ...

    def chat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> Iterator[GenerationChunk]: ...

    def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation: ...


class _LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class ProviderClient(Runtime):
    """The HTTP side of a provider runtime, whatever its task: the loop thread of the blocking
    path, one aiohttp session per calling event loop, the key, and the mapping of upstream
    failures to KasetErrors.

    params: base_url (required), api_key_env (name of the environment variable holding the
    key) or api_key_file (a file holding it), timeout_s (default 60), trust_env (use
    HTTP(S)_PROXY from the environment, default false).
    """

    provider: ClassVar[str] = "provider"

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.base_url = str(self.params.get("base_url") or "").rstrip("/")
        self.timeout_s = float(self.params.get("timeout_s", DEFAULT_TIMEOUT_S))
        self._api_key: str | None = None
        self._loaded = False
        self._runner: _LoopThread | None = None
        # One session per event loop that has made a request (see the module docstring).
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._sessions_lock = threading.Lock()
        connect = min(self.timeout_s, 10.0)
        self._timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=connect)
        # A long answer may legitimately stream for minutes: bound the wait per read instead.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=self.timeout_s)

    # --- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        self._check_params()
        self._api_key = self._read_key()
        self._runner = _LoopThread(f"provider-{self.spec.id}")
        self._loaded = True

    def warmup(self) -> None:
        """Nothing: a warm-up call would spend the operator's quota, and a provider that is down
        at start must not mark the model failed (requests get a clear 502/503 instead)."""

    def unload(self) -> None:
        """Close every session this runtime can reach and stop the loop thread. Callable from
        any thread, the calling loop's included (its session then closes in a task)."""
        self._loaded = False
        runner, self._runner = self._runner, None
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            self._close_session(loop, session)
        if runner is not None:
            runner.stop()

    async def aclose(self) -> None:
        """Close the session of the calling event loop (the async path's). The runtime stays
        loaded: a later call on this loop opens a new session."""
        loop = asyncio.get_running_loop()
        with self._sessions_lock:
            session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()

    def _close_session(self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
        if session.closed or loop.is_closed():
            return  # a closed loop cannot run the close; its connections went with it
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if loop is running:
                task = loop.create_task(session.close())
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)
            else:
                log.debug("the event loop of an HTTP session of %s is not running; left to the GC", self.spec.id)
        except Exception:  # closing is best effort
            log.debug("closing an HTTP session of %s failed", self.spec.id, exc_info=True)

    def _check_params(self) -> None:
        if "api_key" in self.params:
            raise ModelUnavailable(
                f"Model '{self.spec.id}': do not put an API key in the catalog. Name an environment variable "
                "(api_key_env) or a file (api_key_file) that holds it."
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ModelUnavailable(f"Model '{self.spec.id}': params.base_url must be an http(s) URL.")
        self._check_more_params()
        if self.timeout_s <= 0:
            raise ModelUnavailable(f"Model '{self.spec.id}': params.timeout_s must be positive.")

    def _read_key(self) -> str | None:
        env_name = self.params.get("api_key_env")
        key_file = self.params.get("api_key_file")
        if env_name:
            value = os.environ.get(str(env_name), "").strip()
            if not value:
                raise ModelUnavailable(
                    f"Model '{self.spec.id}': the environment variable {env_name} (its API key) is not set."
                )
            return value
        if key_file:
            try:
                value = Path(str(key_file)).read_text(encoding="utf-8").strip()
            except OSError:
                raise ModelUnavailable(f"Model '{self.spec.id}': cannot read its API key file {key_file}.") from None
            if not value:
                raise ModelUnavailable(f"Model '{self.spec.id}': its API key file {key_file} is empty.")
            return value
        return None  # a local server (vLLM, Ollama) often needs no key

    # --- what subclasses implement ----------------------------------------------------------

    def _check_more_params(self) -> None:
        """Checks of the subclass's own params, run by `load()`; raise ModelUnavailable."""

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        """The provider's error body, whatever its shape; `body` is parsed JSON or None."""
        return UpstreamErrorInfo()

    def _unknown_route(self) -> str:
        """What a 404 says the provider does not know, for the error message."""
        return "the route"

    # --- running coroutines on the runtime's loop -------------------------------------------

    def _loop(self) -> _LoopThread:
        if self._runner is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        return self._runner

    def _call(self, coro: Coroutine[Any, Any, T], wait_s: float | None = None) -> T:
        """Run a coroutine on the runtime's loop and wait for it (from an executor thread).

        `wait_s`: how long the coroutine may take, for one that makes several requests in a
        row; default the model's timeout (one request)."""
        try:
            future = self._loop().submit(coro)
        except BaseException:
            coro.close()
            raise
        try:
            return future.result(timeout=(self.timeout_s if wait_s is None else wait_s) + GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._timeout_error() from None

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """Items of an async iterator (not started yet) run on the runtime's loop, for a
        blocking consumer.

        One task drives the whole upstream stream (aiohttp ties a response to the task that
        opened it) and feeds a queue; closing this generator early cancels that task, which
        closes the upstream response.
        """
        runner = self._loop()
        items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for item in stream:
                    items.put(("item", item))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer thread, which re-raises it
                items.put(("error", exc))
            else:
                items.put(("end", None))

        future = runner.submit(pump())
        try:
            while True:
                try:
                    kind, value = items.get(timeout=self.timeout_s + GRACE_S)
                except queue.Empty:
                    raise self._timeout_error() from None
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            future.cancel()

    # --- HTTP ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """Request headers including the key; subclasses decide where the key goes."""
        return {}

    def _request_timeout(self, stream: bool) -> aiohttp.ClientTimeout:
        return self._stream_timeout if stream else self._timeout

    @contextlib.asynccontextmanager
    async def _open(self, method: str, url: str | URL, *, stream: bool = False,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """An upstream response whose status is below 400; errors, timeouts and connection
        failures become KasetErrors. `headers` default to `_headers()` (with the key);
        `kwargs` go to aiohttp (json, data, allow_redirects). Every call carries the current
        span's `traceparent` (tracing on), so the provider's trace continues ours."""
        session = self._require_session()
        sent = self._headers() if headers is None else dict(headers)
        tracing.inject(sent)  # W3C traceparent of the current span, when the request is traced
        async with self._upstream_errors(), session.request(
                method, url, headers=sent, timeout=self._request_timeout(stream=stream), **kwargs) as response:
            if response.status >= 400:
                raise await self._http_error(response)
            yield response

    async def _post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST and parse the JSON object replied. What `_open` does, written out: this is every
        plain chat call, and its two context-manager layers cost ~10 µs of CPU a call."""
        session = self._require_session()
        headers = self._headers()
        tracing.inject(headers)
        try:
            async with session.post(url, headers=headers, timeout=self._timeout, json=payload) as response:
                if response.status >= 400:
                    raise await self._http_error(response)
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    raise self._bad_reply("a reply that is not JSON") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None
        if not isinstance(body, dict):
            raise self._bad_reply("a JSON reply that is not an object")
        return body

    async def _post_sse(self, url: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each server-sent event's JSON data, until the stream ends or `[DONE]`."""
        async with self._open("POST", url, json=payload, stream=True) as response:
            try:
                async for data in sse_data(response.content):
                    if data.strip() == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise self._bad_reply("a stream event that is not JSON") from None
                    if not isinstance(event, dict):
                        raise self._bad_reply("a stream event that is not a JSON object")
                    if "error" in event:
                        # Servers that fail after the headers report the error in-band.
                        raise self._in_band_error(event)
                    yield event
            except ValueError:  # aiohttp: a line longer than its buffer
                raise self._bad_reply("a stream line too long to read") from None

    @contextlib.asynccontextmanager
    async def _upstream_errors(self) -> AsyncIterator[None]:
        """Timeouts and connection failures become KasetErrors; KasetErrors pass through."""
        try:
            yield
        except KasetError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: TimeoutError | aiohttp.ClientError) -> UpstreamError:
        if isinstance(exc, TimeoutError):
            return self._timeout_error()
        return self._connection_error(exc)

    def _require_session(self) -> aiohttp.ClientSession:
        """The session of the running event loop, made on its first request."""
        if not self._loaded:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(trust_env=bool(self.params.get("trust_env", False)))
            with self._sessions_lock:
                for old in [other for other in self._sessions if other.is_closed()]:
                    del self._sessions[old]  # loops that went away without aclose()
                self._sessions[loop] = session
        return session

    # --- errors ----------------------------------------------------------------------------------

    def _who(self) -> str:
        return f"The provider behind model '{self.spec.id}'"

    def scrub(self, text: str) -> str:
        """`text` without the API key, cut to a length fit for an error message."""
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        text = " ".join(text.split())
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    async def _http_error(self, response: aiohttp.ClientResponse) -> KasetError:
        raw = await response.content.read(MAX_ERROR_BODY)
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = None
        info = self._parse_error(body)
        message = self.scrub(info.message or text or response.reason or "")
        status = response.status
        # Auth failures are logged without the provider's words: some echo part of the key.
        said = "(message withheld)" if status in (401, 403) or info.auth else message
        log.warning("%s %s: HTTP %d from %s (%s) %s", self.provider, self.spec.id, status,
                    self.base_url, info.status or "-", said)
        return self._error_for(status, info, message, retry_after_header(response.headers.get("Retry-After")))

    def _error_for(self, status: int, info: UpstreamErrorInfo, message: str,
                   retry_after: float | None) -> KasetError:
        who = self._who()
        if status in (401, 403) or info.auth:
            # Never pass the provider's words on: some echo part of the key back.
            return UpstreamAuthFailed(
                f"{who} refused this server's API key (HTTP {status}). An operator must check the key "
                "configured for this model."
            )
        if status == 429:
            retry = retry_after if retry_after is not None else info.retry_after
            hint = f" Retry after {retry:g} s." if retry is not None else ""
            return UpstreamRateLimited(f"{who} is rate-limiting this server: {message}.{hint}", retry_after=retry)
        if status == 413:
            return PayloadTooLarge(f"{who} says the request is too large: {message}")
        if status in (400, 422):
            return InvalidRequest(f"{who} refused the request: {message}", code="upstream_invalid_request")
        if status == 404:
            return UpstreamError(f"{who} does not know {self._unknown_route()} ({message}). "
                                 "An operator must check the model's catalog entry.")
        if status in (408, 504):
            return UpstreamTimeout(f"{who} timed out (HTTP {status}): {message}")
        return UpstreamError(f"{who} failed (HTTP {status}): {message}")

    def _in_band_error(self, event: dict[str, Any]) -> KasetError:
        info = self._parse_error(event)
        code = event.get("error", {}).get("code") if isinstance(event.get("error"), dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        message = self.scrub(info.message or "error in the stream")
        said = "(message withheld)" if status in (401, 403) or info.auth else message
        log.warning("%s %s: error in the stream from %s: %s", self.provider, self.spec.id, self.base_url, said)
        return self._error_for(status, info, message, None)

    def _timeout_error(self) -> UpstreamTimeout:
        log.warning("%s %s: no answer from %s within %g s", self.provider, self.spec.id, self.base_url,
                    self.timeout_s)
        return UpstreamTimeout(f"{self._who()} did not answer within {self.timeout_s:g} s.")

    def _connection_error(self, exc: aiohttp.ClientError) -> UpstreamError:
        log.warning("%s %s: cannot reach %s: %s", self.provider, self.spec.id, self.base_url,
                    self.scrub(f"{type(exc).__name__}: {exc}"))
        return UpstreamError(f"{self._who()} could not be reached ({type(exc).__name__}).",
                             code="upstream_unreachable")

    def _bad_reply(self, what: str) -> UpstreamError:
        log.warning("%s %s: %s sent %s", self.provider, self.spec.id, self.base_url, what)
        return UpstreamError(f"{self._who()} sent {what}.")


class ProviderRuntime(ProviderClient, ChatModel):
    """Base of the chat provider runtimes (OpenAI-compatible servers, Gemini).

    params, besides ProviderClient's: model (the upstream model name, required), vision (the
    model accepts images), context_length (informational, default 32768).

    Async-native: the `a`-methods run on the caller's event loop (see the module docstring);
    the blocking ones run the same coroutines on the runtime's loop thread. A stream method
    returns an async generator that has not sent anything yet (its input is checked at the
    call): iterate it on one loop, and `aclose()` it (`contextlib.aclosing`) to stop early,
    which closes the upstream response.
    """

    async_native: ClassVar[bool] = True
    default_vision: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.upstream_model = str(self.params.get("model") or "")
        self.vision = bool(self.params.get("vision", self.default_vision))

    def _check_more_params(self) -> None:
        if not self.upstream_model:
            raise ModelUnavailable(f"Model '{self.spec.id}': params.model (the provider's model name) is missing.")

    def _unknown_route(self) -> str:
        return f"the model '{self.upstream_model}' or the route"

    @property
    def context_length(self) -> int:
        return int(self.params.get("context_length", DEFAULT_CONTEXT_LENGTH))

    # --- what subclasses implement: the coroutines both paths run ---------------------------

    async def _agenerate(self, messages: Messages, params: GenerationParams) -> Generation:
        raise NotImplementedError

    def _agenerate_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Build the request now (bad input raises here, at the call) and return the async
        generator that sends it and yields the chunks."""
        raise NotImplementedError

    # --- async, on the caller's event loop ----------------------------------------------------

    async def achat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return await self._agenerate(list(messages), params)

    def achat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._agenerate_stream(list(messages), params)

    async def acomplete(self, prompt: str, params: GenerationParams) -> Generation:
        """Text completion; this default sends the prompt as one user turn (for providers with
        no raw completion route)."""
        return await self._agenerate([{"role": "user", "content": prompt}], params)

    def acomplete_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        return self._agenerate_stream([{"role": "user", "content": prompt}], params)

    async def achat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation:
        """Chat whose message contents may be lists of OpenAI parts (text, image_url)."""
        self._check_images(messages)
        return await self._agenerate(messages, params)

    def achat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        self._check_images(messages)
        return self._agenerate_stream(messages, params)

    async def adescribe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        """Ask the provider about one JPEG photo, sent inline as a data URL part."""
        return await self.achat_multimodal(_image_messages(image_jpeg, prompt), params)

    # --- blocking: the same coroutines, on the runtime's loop thread -------------------------

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Generation:
        return self._call(self.achat(messages, params))

    def chat_stream(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.achat_stream(messages, params))

    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        return self._call(self.acomplete(prompt, params))

    def complete_stream(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.acomplete_stream(prompt, params))

    def chat_multimodal(self, messages: Messages, params: GenerationParams) -> Generation:
        """Chat whose message contents may be lists of OpenAI parts (text, image_url)."""
        self._check_images(messages)
        return self._call(self._agenerate(messages, params))

    def chat_multimodal_stream(self, messages: Messages, params: GenerationParams) -> Iterator[GenerationChunk]:
        return self._iterate(self.achat_multimodal_stream(messages, params))

    def describe_image(self, image_jpeg: bytes, prompt: str, params: GenerationParams) -> Generation:
        """Ask the provider about one JPEG photo, sent inline as a data URL part."""
        return self.chat_multimodal(_image_messages(image_jpeg, prompt), params)

    def _check_images(self, messages: Messages) -> None:
        if not self.vision and has_images(messages):
            raise InvalidRequest(
                f"The model '{self.spec.id}' is not configured to accept images (params.vision is false).",
                param="messages",
            )


# --- helpers -----------------------------------------------------------------------------------


async def sse_data(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def retry_after_header(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def jpeg_data_url(image_jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image_jpeg).decode("ascii")


def _image_messages(image_jpeg: bytes, prompt: str) -> Messages:
    return [{"role": "user", "content": [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": jpeg_data_url(image_jpeg)}},
    ]}]


def has_images(messages: Messages) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                         for p in m["content"]) for m in messages)


def finish_reason(value: Any) -> Literal["stop", "length"]:
    """OpenAI-style finish reason from a provider's: only running out of tokens is "length"."""
    return "length" if str(value).lower() in ("length", "max_tokens") else "stop"
