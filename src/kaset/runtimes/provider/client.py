"""The HTTP side of a provider runtime, whatever its task: sessions, key, requests.

Sessions: one aiohttp `ClientSession` per event loop that calls the runtime (a session belongs
to one loop), made on that loop on its first request (`_require_session`): the loop thread's
for the blocking path (`kaset.runtimes.provider.loop_thread`), the gateway's for the async
path (a test's own loop, too). Each keeps its keep-alive connections for all the calls made on
its loop, and is only ever touched from its loop, so it needs no lock. `aclose()` closes the
calling loop's session; `unload()` closes every one it can reach (a loop that has already been
closed took its connections with it). Beside each session, for an http:// upstream reached
without a proxy, the kept-alive connections of the plain-HTTP shortcut that `_post_json` takes
(`kaset.runtimes.provider.http1`), closed with it.

Secrets: the key comes from the environment (`api_key_env`) or a file (`api_key_file`, a
Docker or Kubernetes secret mount), never from the catalog itself, whose params may be shown
to operators. It is sent in a header only (never in a URL, which access logs record), never
logged, and scrubbed from any upstream text that reaches a client or a log line
(`kaset.runtimes.provider.errors`).

Tracing: every upstream call carries the W3C `traceparent` of the current span
(`kaset.tracing.inject`: the router's model-call span, nothing when the request is not traced).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from yarl import URL

from kaset import tracing
from kaset.errors import ModelUnavailable
from kaset.runtimes.base import Runtime
from kaset.runtimes.provider.errors import MAX_ERROR_BODY, UpstreamErrorMapping, log
from kaset.runtimes.provider.http1 import KeepAlivePool, Redirected
from kaset.runtimes.provider.loop_thread import LoopThread

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
# Session closes scheduled by `unload()` on the loop that called it, kept until they finish.
_closing: set[asyncio.Task[None]] = set()


class ProviderClient(UpstreamErrorMapping, Runtime):
    """The HTTP side of a provider runtime, whatever its task: the loop thread of the blocking
    path, one aiohttp session per calling event loop, the key, and the mapping of upstream
    failures to KasetErrors (`UpstreamErrorMapping`).

    params: base_url (required), api_key_env (name of the environment variable holding the
    key) or api_key_file (a file holding it), timeout_s (default 60), trust_env (use
    HTTP(S)_PROXY from the environment, default false).
    """

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.base_url = str(self.params.get("base_url") or "").rstrip("/")
        self.timeout_s = float(self.params.get("timeout_s", DEFAULT_TIMEOUT_S))
        self._api_key: str | None = None
        self._loaded = False
        self._runner: LoopThread | None = None
        # One session per event loop that has made a request (see the module docstring).
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        # Beside each session, the kept-alive connections of the plain-HTTP shortcut (`http1`),
        # for an http:// upstream reached without a proxy.
        self._pools: dict[asyncio.AbstractEventLoop, KeepAlivePool] = {}
        self._direct = self.base_url.startswith("http://") and not self.params.get("trust_env", False)
        self._sessions_lock = threading.Lock()
        connect = min(self.timeout_s, 10.0)
        self._timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=connect)
        # A long answer may legitimately stream for minutes: bound the wait per read instead.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=self.timeout_s)

    # --- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        self._check_params()
        self._api_key = self._read_key()
        self._runner = LoopThread(f"provider-{self.spec.id}")
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
            pools, self._pools = self._pools, {}
        for loop, session in sessions.items():
            self._close_session(loop, session, pools.get(loop))
        if runner is not None:
            runner.stop()

    async def aclose(self) -> None:
        """Close the session of the calling event loop (the async path's). The runtime stays
        loaded: a later call on this loop opens a new session."""
        loop = asyncio.get_running_loop()
        with self._sessions_lock:
            session = self._sessions.pop(loop, None)
            pool = self._pools.pop(loop, None)
        if pool is not None:
            pool.close()
        if session is not None:
            await session.close()

    def _close_session(self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession,
                       pool: KeepAlivePool | None) -> None:
        if session.closed or loop.is_closed():
            return  # a closed loop cannot run the close; its connections went with it
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if loop is running:
                task = loop.create_task(_close(session, pool))
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(_close(session, pool), loop).result(timeout=5)
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

    # --- what subclasses implement (and `UpstreamErrorMapping`'s hooks) ----------------------

    def _check_more_params(self) -> None:
        """Checks of the subclass's own params, run by `load()`; raise ModelUnavailable."""

    # --- running coroutines on the runtime's loop thread (the blocking path) ----------------

    def _loop(self) -> LoopThread:
        if self._runner is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        return self._runner

    def _call(self, coro: Coroutine[Any, Any, T], wait_s: float | None = None) -> T:
        """Run a coroutine on the runtime's loop and wait for it (from an executor thread).

        `wait_s`: how long the coroutine may take, for one that makes several requests in a
        row; default the model's timeout (one request)."""
        try:
            runner = self._loop()
        except BaseException:
            coro.close()
            raise
        return runner.wait(coro, self.timeout_s if wait_s is None else wait_s, self._timeout_error)

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """Items of an async iterator (not started yet) run on the runtime's loop, for a
        blocking consumer; nothing runs before the first item is asked for."""
        yield from self._loop().iterate(stream, self.timeout_s, self._timeout_error)

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
        """POST and parse the JSON object replied. This is every plain chat call: to an http://
        upstream it takes the shortcut of `http1` (a quarter of the gateway's CPU per call),
        else what `_open` does, written out (its two context-manager layers cost ~10 µs)."""
        session = self._require_session()
        headers = self._headers()
        tracing.inject(headers)
        pool = self._pools.get(asyncio.get_running_loop()) if self._direct else None
        # A session holding cookies sends them: aiohttp's work, as is a redirect (sent again here).
        if pool is not None and url.startswith("http://") and not len(session.cookie_jar):
            with contextlib.suppress(Redirected):
                return await self._post_json_directly(pool, session, url, headers, payload)
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

    async def _post_json_directly(self, pool: KeepAlivePool, session: aiohttp.ClientSession, url: str,
                                  headers: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
        """`_post_json` through the plain-HTTP shortcut, with the same outcomes."""
        data = json.dumps(payload).encode("utf-8")  # what aiohttp's json= sends
        try:
            reply = await pool.post(url, headers, data, self._timeout.total, self._timeout.connect)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None
        cookies = reply.headers.getall("Set-Cookie", ())
        if cookies:  # into the session's jar, as aiohttp would; later calls send them through aiohttp
            session.cookie_jar.update_cookies_from_headers(cookies, URL(url))
        if reply.status >= 400:
            raise self._reply_error(reply.status, reply.reason, reply.body[:MAX_ERROR_BODY],
                                    reply.headers.get("Retry-After"))
        try:
            body = reply.json()
        except ValueError:
            raise self._bad_reply("a reply that is not JSON") from None
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
                    self._pools.pop(old, None)
                self._sessions[loop] = session
                if self._direct:
                    self._pools[loop] = KeepAlivePool()
        return session


async def _close(session: aiohttp.ClientSession, pool: KeepAlivePool | None) -> None:
    if pool is not None:
        pool.close()
    await session.close()


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
