"""The provider runtimes' async methods (`achat`, `achat_stream`, ...): run on the caller's event
loop with a session of that loop, the same replies and the same KasetErrors as the blocking
methods, and a stream the consumer stops early closes its upstream response.

Against the local fakes of tests/fixtures/fake_providers.py, plus a small server of this file's own
for what those fakes never do (a reply that is not JSON, a stream that trickles).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaset import tracing
from kaset.errors import (
    InvalidRequest,
    KasetError,
    ModelUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from kaset.registry.catalog import ModelSpec
from kaset.runtimes import runtime_class
from kaset.runtimes.base import GenerationChunk, GenerationParams
from kaset.runtimes.gemini import GeminiRuntime
from kaset.runtimes.openai_compatible import OpenAICompatibleRuntime
from kaset.runtimes.provider import ProviderRuntime
from tests.fixtures.fake_providers import FakeServer, gemini_app, openai_app, serve

KEY = "sk-test-async-0123456789-secret"
ENV = "KASET_TEST_ASYNC_PROVIDER_KEY"
PARAMS = GenerationParams(max_tokens=50, temperature=0.0)
HI = [{"role": "user", "content": "hi"}]

Build = Callable[..., Any]


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeServer]:
    with serve(openai_app(KEY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[FakeServer]:
    with serve(gemini_app(KEY)) as fake:
        yield fake


# --- a server for what the fakes never do --------------------------------------------------

OUTCOMES = web.AppKey("outcomes", list)
TRICKLE_EVENTS = 400
TRICKLE_GAP_S = 0.02


def _odd_app() -> web.Application:
    """POST /v1/chat/completions answering by model: `bad-json` (200, not JSON), `bad-event` (a stream
    event that is not JSON), `trickle` (a long stream, one event every 20 ms; how it ended goes to
    app[OUTCOMES]: "finished", "cancelled" or "reset")."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        if model == "bad-json":
            return web.Response(text="<html>upstream proxy error</html>", content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if model == "bad-event":
            await response.write(b"data: {not json\n\n")
            return response
        outcome = "finished"
        try:
            for i in range(TRICKLE_EVENTS):
                event = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                await asyncio.sleep(TRICKLE_GAP_S)
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionError:
            outcome = "reset"
        finally:
            request.app[OUTCOMES].append(outcome)
        return response

    app = web.Application()
    app[OUTCOMES] = []
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture(scope="module")
def odd_server() -> Iterator[tuple[FakeServer, list[str]]]:
    app = _odd_app()
    with serve(app) as fake:
        yield fake, app[OUTCOMES]


# --- runtimes ----------------------------------------------------------------------------------


@pytest.fixture
async def build(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Build]:
    """build(runtime, base_url, model, **params): a loaded provider runtime; afterwards the test
    loop's session is closed with aclose() and the runtime unloaded."""
    monkeypatch.setenv(ENV, KEY)
    made: list[ProviderRuntime] = []

    def make(runtime: str, base_url: str, model: str, **params: Any) -> Any:
        spec = ModelSpec.model_validate({"id": f"async-{model}", "tasks": ["chat"], "runtime": runtime,
                                         "license": "proprietary", "source": {"kind": "builtin"},
                                         "params": {"base_url": base_url, "model": model, "api_key_env": ENV,
                                                    **params}})
        built = runtime_class(runtime)(spec, None)
        assert isinstance(built, ProviderRuntime)
        built.load()
        made.append(built)
        return built

    yield make
    for built in made:
        await built.aclose()
        built.unload()


@pytest.fixture
def openai(build: Build, openai_server: FakeServer) -> Callable[..., OpenAICompatibleRuntime]:
    return lambda model="gpt-test", **params: build("openai-compatible", f"{openai_server.base_url}/v1", model,
                                                    **params)


@pytest.fixture
def gemini(build: Build, gemini_server: FakeServer) -> Callable[..., GeminiRuntime]:
    return lambda model="gemini-test", **params: build("gemini", gemini_server.base_url, model, **params)


async def _collect(stream: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in stream]


async def _both_fail(runtime: ProviderRuntime, call: Callable[[], Awaitable[Any]],
                     blocking: Callable[[], Any]) -> KasetError:
    """The error of the async call, checked to be the blocking call's (type, status, message, code)."""
    with pytest.raises(KasetError) as async_caught:
        await call()
    with pytest.raises(KasetError) as blocking_caught:
        await asyncio.to_thread(blocking)
    a, b = async_caught.value, blocking_caught.value
    assert (type(a), a.status_code, a.message, a.code, a.headers) == (type(b), b.status_code, b.message, b.code,
                                                                     b.headers)
    return a


# --- the async path ----------------------------------------------------------------------------


def test_provider_runtimes_say_they_are_async_native() -> None:
    assert OpenAICompatibleRuntime.async_native is True and GeminiRuntime.async_native is True
    # Other runtimes have no such attribute (or a false one): callers check with getattr.
    assert getattr(runtime_class("echo"), "async_native", False) is False


async def test_achat_runs_on_the_callers_loop_with_its_own_session(openai: Callable[..., OpenAICompatibleRuntime],
                                                                  openai_server: FakeServer) -> None:
    runtime = openai()
    loop = asyncio.get_running_loop()
    result = await runtime.achat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
                                 GenerationParams(max_tokens=50, temperature=0.2, stop=["\n"], seed=4))
    assert result.text == "Seen 0 image(s). You said: hello"
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 11, 6)
    sent = openai_server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"]["stop"] == ["\n"] and sent["body"]["seed"] == 4 and sent["body"]["stream"] is False
    # Only this loop has a session: nothing went through the runtime's loop thread.
    assert list(runtime._sessions) == [loop]
    session = runtime._sessions[loop]
    assert (await runtime.achat(HI, PARAMS)).text.endswith("You said: hi")
    assert runtime._sessions[loop] is session  # reused, keep-alive
    # The blocking path, meanwhile, uses the loop thread's own session; both keep working.
    assert runtime.chat(HI, PARAMS).text == (await runtime.achat(HI, PARAMS)).text
    assert len(runtime._sessions) == 2 and runtime._sessions[loop] is session


async def test_every_async_entry_point_answers_like_its_blocking_twin(
        openai: Callable[..., OpenAICompatibleRuntime], openai_server: FakeServer) -> None:
    runtime = openai(vision=True)
    words = [{"role": "user", "content": "one two three"}]
    chunks = await _collect(runtime.achat_stream(words, PARAMS))
    assert "".join(c.text for c in chunks) == "Seen 0 image(s). You said: one two three"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 8
    assert chunks == list(runtime.chat_stream(words, PARAMS))

    assert (await runtime.acomplete("Once upon", PARAMS)).text == "completed: Once upon"
    assert openai_server.requests[-1]["path"] == "/v1/completions"
    streamed = await _collect(runtime.acomplete_stream("Once upon", PARAMS))
    assert "".join(c.text for c in streamed) == "completed: Once upon"
    assert streamed == list(runtime.complete_stream("Once upon", PARAMS))

    described = await runtime.adescribe_image(b"\xff\xd8fakejpeg", "What is this?", PARAMS)
    assert described == runtime.describe_image(b"\xff\xd8fakejpeg", "What is this?", PARAMS)
    assert described.text == "Seen 1 image(s). You said: What is this?"
    part = openai_server.requests[-1]["body"]["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9hmYWtlanBlZw=="}}

    photo = [{"role": "user", "content": [{"type": "text", "text": "Look"},
                                          {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA=="}}]}]
    assert (await runtime.achat_multimodal(photo, PARAMS)).text == "Seen 1 image(s). You said: Look"
    assert "".join(c.text for c in await _collect(runtime.achat_multimodal_stream(photo, PARAMS))) == \
        "Seen 1 image(s). You said: Look"


async def test_images_to_a_text_model_are_refused_at_the_call(openai: Callable[..., OpenAICompatibleRuntime],
                                                             openai_server: FakeServer) -> None:
    runtime = openai("text-only")
    before = len(openai_server.requests)
    photo = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA=="}}]}]
    with pytest.raises(InvalidRequest, match="not configured to accept images"):
        await runtime.adescribe_image(b"\xff\xd8", "What is this?", PARAMS)
    with pytest.raises(InvalidRequest, match="not configured to accept images"):
        runtime.achat_multimodal_stream(photo, PARAMS)  # before iterating: nothing is sent
    assert len(openai_server.requests) == before


async def test_429_with_retry_after_maps_like_the_blocking_path(openai: Callable[..., OpenAICompatibleRuntime],
                                                               openai_server: FakeServer) -> None:
    runtime = openai("rate-limited")
    caught = await _both_fail(runtime, lambda: runtime.achat(HI, PARAMS), lambda: runtime.chat(HI, PARAMS))
    assert isinstance(caught, UpstreamRateLimited) and caught.retry_after == 7
    assert caught.headers == {"Retry-After": "7"}
    # A forced 429 of the whole server, with an HTTP-date-less Retry-After of its own.
    runtime = openai()
    try:
        openai_server.fail(429, times=2, retry_after="3")
        caught = await _both_fail(runtime, lambda: runtime.achat(HI, PARAMS), lambda: runtime.chat(HI, PARAMS))
    finally:
        openai_server.heal()
    assert isinstance(caught, UpstreamRateLimited) and caught.retry_after == 3
    # A stream fails before its first chunk, so the gateway can still answer 429.
    with pytest.raises(UpstreamRateLimited) as streamed:
        await anext(aiter(openai("rate-limited").achat_stream(HI, PARAMS)))
    assert streamed.value.retry_after == 7


async def test_500_and_in_band_stream_errors(openai: Callable[..., OpenAICompatibleRuntime]) -> None:
    runtime = openai("broken")
    caught = await _both_fail(runtime, lambda: runtime.achat(HI, PARAMS), lambda: runtime.chat(HI, PARAMS))
    assert type(caught) is UpstreamError and caught.status_code == 502 and "HTTP 500" in caught.message
    stream = openai("mid-stream-error").achat_stream(HI, PARAMS)
    assert (await anext(aiter(stream))).text == "Seen"
    with pytest.raises(UpstreamError, match="crashed"):
        await _collect(stream)


async def test_timeout_is_504_without_waiting_longer(openai: Callable[..., OpenAICompatibleRuntime]) -> None:
    runtime = openai("slow", timeout_s=0.5)
    for call in (lambda: runtime.achat(HI, PARAMS), lambda: _collect(runtime.achat_stream(HI, PARAMS))):
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout) as caught:
            await call()
        assert caught.value.status_code == 504 and time.perf_counter() - started < 2.5
    with pytest.raises(UpstreamTimeout) as blocking:
        await asyncio.to_thread(runtime.chat, HI, PARAMS)
    assert blocking.value.message == caught.value.message


async def test_replies_that_are_not_json_are_502(build: Build, odd_server: tuple[FakeServer, list[str]]) -> None:
    base_url = f"{odd_server[0].base_url}/v1"
    runtime: ProviderRuntime = build("openai-compatible", base_url, "bad-json")
    caught = await _both_fail(runtime, lambda: runtime.achat(HI, PARAMS), lambda: runtime.chat(HI, PARAMS))
    assert type(caught) is UpstreamError and caught.status_code == 502 and "not JSON" in caught.message
    runtime = build("openai-compatible", base_url, "bad-event")
    caught = await _both_fail(runtime, lambda: _collect(runtime.achat_stream(HI, PARAMS)),
                              lambda: list(runtime.chat_stream(HI, PARAMS)))
    assert type(caught) is UpstreamError and "stream event that is not JSON" in caught.message


async def test_unreachable_upstream_is_502(build: Build) -> None:
    runtime: ProviderRuntime = build("openai-compatible", "http://127.0.0.1:9/v1", "m")
    caught = await _both_fail(runtime, lambda: runtime.achat(HI, PARAMS), lambda: runtime.chat(HI, PARAMS))
    assert caught.code == "upstream_unreachable"


async def _wait_for(outcomes: list[str], count: int, timeout_s: float = 3.0) -> None:
    """Until the trickle server (another thread) has recorded `count` outcomes."""

    def poll() -> None:
        deadline = time.monotonic() + timeout_s
        while len(outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    await asyncio.to_thread(poll)


async def test_a_stream_stopped_early_closes_the_upstream_response(
        build: Build, odd_server: tuple[FakeServer, list[str]]) -> None:
    server, outcomes = odd_server
    runtime: ProviderRuntime = build("openai-compatible", f"{server.base_url}/v1", "trickle")
    loop = asyncio.get_running_loop()
    before = len(outcomes)
    started = time.perf_counter()
    async with contextlib.aclosing(runtime.achat_stream(HI, PARAMS)) as stream:
        seen = 0
        async for chunk in stream:
            assert chunk.text == f"w{seen} "
            seen += 1
            if seen == 3:
                break
    await _wait_for(outcomes, before + 1)
    # The server stopped sending long before the 8 s the whole stream takes.
    assert outcomes[before:] in (["cancelled"], ["reset"]) and time.perf_counter() - started < 3
    connector = runtime._sessions[loop].connector
    assert connector is not None and not connector._acquired
    # A consumer that just drops the stream: the loop's async-generator finaliser closes it.
    stream = runtime.achat_stream(HI, PARAMS)
    assert (await anext(aiter(stream))).text == "w0 "
    del stream
    await _wait_for(outcomes, before + 2)
    assert outcomes[before + 1:] in (["cancelled"], ["reset"])
    # The blocking path still closes its upstream too when its consumer stops.
    blocking = runtime.chat_stream(HI, PARAMS)
    assert next(iter(blocking)).text == "w0 "
    blocking.close()
    await _wait_for(outcomes, before + 3)
    assert outcomes[before + 2:] in (["cancelled"], ["reset"])


# --- sessions and the event loops that own them -------------------------------------------


async def test_one_session_per_loop_and_unload_closes_them(openai: Callable[..., OpenAICompatibleRuntime]) -> None:
    runtime = openai()
    loop = asyncio.get_running_loop()
    assert (await runtime.achat(HI, PARAMS)).text.endswith("hi")
    mine = runtime._sessions[loop]

    # Another loop, running in another thread, gets a session of its own.
    other_ready = threading.Event()
    other: dict[str, Any] = {}

    def other_thread() -> None:
        async def main() -> None:
            other["stop"] = asyncio.Event()
            other["text"] = (await runtime.achat(HI, PARAMS)).text
            other["loop"] = asyncio.get_running_loop()
            other_ready.set()
            await other["stop"].wait()

        asyncio.run(main())

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert await asyncio.to_thread(other_ready.wait, 10)
        assert other["text"].endswith("hi") and other["loop"] is not loop
        theirs = runtime._sessions[other["loop"]]
        assert theirs is not mine

        # aclose() closes the calling loop's session only; a later call opens a new one.
        await runtime.aclose()
        assert mine.closed and not theirs.closed
        assert (await runtime.achat(HI, PARAMS)).text.endswith("hi")
        mine = runtime._sessions[loop]

        # unload() from this loop: this loop's session closes in a task, the other loop's at once.
        runtime.unload()
        assert theirs.closed
        await asyncio.sleep(0.05)
        assert mine.closed
    finally:
        if "loop" in other:
            other["loop"].call_soon_threadsafe(other["stop"].set)
        await asyncio.to_thread(thread.join, 10)
    with pytest.raises(ModelUnavailable, match="not loaded"):
        await runtime.achat(HI, PARAMS)
    with pytest.raises(ModelUnavailable, match="not loaded"):
        await _collect(runtime.achat_stream(HI, PARAMS))


async def test_a_runtime_never_loaded_refuses_async_calls() -> None:
    spec = ModelSpec.model_validate({"id": "m", "tasks": ["chat"], "runtime": "openai-compatible", "license": "x",
                                     "source": {"kind": "builtin"},
                                     "params": {"base_url": "http://x/v1", "model": "m"}})
    runtime = OpenAICompatibleRuntime(spec, None)
    with pytest.raises(ModelUnavailable, match="not loaded"):
        await runtime.achat(HI, PARAMS)
    await runtime.aclose()  # nothing to close


# The session of the loop that closed without aclose() is left to the GC, which says so.
@pytest.mark.filterwarnings("ignore:Unclosed client session:ResourceWarning")
def test_sessions_of_a_loop_that_is_gone_are_dropped(openai_server: FakeServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    spec = ModelSpec.model_validate({"id": "m", "tasks": ["chat"], "runtime": "openai-compatible", "license": "x",
                                     "source": {"kind": "builtin"},
                                     "params": {"base_url": f"{openai_server.base_url}/v1", "model": "m",
                                                "api_key_env": ENV}})
    runtime = OpenAICompatibleRuntime(spec, None)
    runtime.load()
    try:
        async def call() -> str:
            try:
                return (await runtime.achat(HI, PARAMS)).text
            finally:
                await runtime.aclose()

        assert asyncio.run(call()).endswith("hi")
        assert asyncio.run(runtime.achat(HI, PARAMS)).text.endswith("hi")  # this loop closes without aclose()
        assert len(runtime._sessions) == 1
        assert asyncio.run(call()).endswith("hi")  # the closed loop's entry is pruned
        assert runtime._sessions == {}
    finally:
        runtime.unload()  # skips the session of the closed loop without an error


# --- Gemini ------------------------------------------------------------------------------------


async def test_gemini_async(gemini: Callable[..., GeminiRuntime], gemini_server: FakeServer) -> None:
    runtime = gemini()
    result = await runtime.achat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
                                 PARAMS)
    assert result.text == "Seen 0 image(s). You said: hello" and result.prompt_tokens == 9
    assert gemini_server.requests[-1]["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    chunks = await _collect(runtime.achat_stream([{"role": "user", "content": "one two"}], PARAMS))
    assert "".join(c.text for c in chunks) == "Seen 0 image(s). You said: one two"
    assert gemini_server.requests[-1]["path"].endswith(":streamGenerateContent?alt=sse")
    assert (await runtime.acomplete("once", PARAMS)).text.endswith("You said: once")
    assert "".join(c.text for c in await _collect(runtime.acomplete_stream("once", PARAMS))).endswith("once")
    assert (await runtime.adescribe_image(b"\xff\xd8x", "What?", PARAMS)).text == "Seen 1 image(s). You said: What?"
    # Bad input is refused at the call, before anything is sent.
    with pytest.raises(InvalidRequest, match="input_audio"):
        runtime.achat_multimodal_stream([{"role": "user", "content": [{"type": "input_audio"}]}], PARAMS)
    limited = gemini("rate-limited")
    caught = await _both_fail(limited, lambda: limited.achat(HI, PARAMS), lambda: limited.chat(HI, PARAMS))
    assert isinstance(caught, UpstreamRateLimited) and caught.retry_after == 13


# --- tracing: traceparent on every upstream call ----------------------------------------------


async def test_every_upstream_call_carries_the_current_spans_traceparent(
        openai: Callable[..., OpenAICompatibleRuntime], gemini: Callable[..., GeminiRuntime],
        openai_server: FakeServer, gemini_server: FakeServer) -> None:
    exporter = InMemorySpanExporter()
    traced = tracing.setup(tracing.GATEWAY_SERVICE, exporter)
    assert traced is not None
    runtime, google = openai(), gemini()

    def parent_of(server: FakeServer) -> str | None:
        header = server.requests[-1]["headers"].get("traceparent")
        return None if header is None else str(header).split("-")[2]

    # Outside a traced request nothing is added.
    await runtime.achat(HI, PARAMS)
    assert parent_of(openai_server) is None
    with tracing.activate(traced), tracing.model_call("async-gpt-test", "chat") as span:
        assert span is not None
        own = trace.format_span_id(span.get_span_context().span_id)
        await runtime.achat(HI, PARAMS)  # the plain JSON post
        assert parent_of(openai_server) == own
        await _collect(runtime.achat_stream(HI, PARAMS))  # the streamed one
        assert parent_of(openai_server) == own
        await google.achat(HI, PARAMS)
        assert parent_of(gemini_server) == own
        # The blocking path, from a thread that has the context (to_thread copies it), too.
        await asyncio.to_thread(runtime.chat, HI, PARAMS)
        assert parent_of(openai_server) == own
        # A provider error carries it as well (the request went out before the 500 came back).
        broken = openai("broken")
        with pytest.raises(UpstreamError):
            await broken.achat(HI, PARAMS)
        assert parent_of(openai_server) == own
    traced.shutdown()
