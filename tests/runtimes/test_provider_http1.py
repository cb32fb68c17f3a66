"""The plain-HTTP shortcut of the provider runtimes (`kaset.runtimes.provider.http1`) against aiohttp.

A raw TCP server answers each case with canned bytes (what a real server may send: chunked,
compressed, HTTP/1.0, early hints, a dropped connection, garbage) and records the bytes it got.
The same call is made twice, through the shortcut and through aiohttp (the runtime with the
shortcut off), and the two must end alike: the same request bytes on the wire, the same answer
or the same KasetError (type, message, code, headers).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import brotli
import pytest

from kaset.errors import KasetError, ModelUnavailable, UpstreamTimeout
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.base import GenerationParams
from kaset.runtimes.openai_compatible import OpenAICompatibleRuntime
from kaset.runtimes.provider import http1
from tests.fixtures.tcp_proxy import free_port

KEY = "sk-test-http1-0123456789-secret"
ENV = "KASET_TEST_HTTP1_PROVIDER_KEY"
HI = [{"role": "user", "content": "hi"}]
PARAMS = GenerationParams(max_tokens=20, temperature=0.0)
ANSWER = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "สวัสดี héllo"},
                                  "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode()


def reply(status: str = "200 OK", body: bytes = ANSWER, headers: tuple[str, ...] = ("Content-Type: application/json",),
          length: bool = True, version: str = "HTTP/1.1") -> bytes:
    head = [f"{version} {status}", *headers] + ([f"Content-Length: {len(body)}"] if length else [])
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@dataclass
class Case:
    answer: bytes  # written after the request has been read
    close: bool = False  # close the connection after writing
    delay_s: float = 0.0


@dataclass
class RawServer:
    """Answers POST /<case>/v1/chat/completions with the case's bytes; records every request."""

    cases: dict[str, Case]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    def url(self, case: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{case}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                name = head.split(b" ", 2)[1].decode().split("/")[1]
                case = self.cases[name]
                await asyncio.sleep(case.delay_s)
                writer.write(case.answer)
                await writer.drain()
                if case.close:
                    return
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer(cases={})
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    yield server
    listening.close()


Make = Callable[..., OpenAICompatibleRuntime]


@pytest.fixture
async def make(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Make]:
    """make(base_url, shortcut=True, **params): a loaded runtime, the shortcut on or off."""
    monkeypatch.setenv(ENV, KEY)
    made: list[OpenAICompatibleRuntime] = []

    def build(base_url: str, shortcut: bool = True, **params: Any) -> OpenAICompatibleRuntime:
        spec = ModelSpec.model_validate({"id": "http1-test", "tasks": ["chat"], "runtime": "openai-compatible",
                                         "license": "proprietary", "source": {"kind": "builtin"},
                                         "params": {"base_url": base_url, "model": "m", "api_key_env": ENV,
                                                    **params}})
        runtime = OpenAICompatibleRuntime(spec, None)
        runtime.load()
        runtime._direct = runtime._direct and shortcut
        made.append(runtime)
        return runtime

    yield build
    for runtime in made:
        await runtime.aclose()
        runtime.unload()


async def outcome(runtime: OpenAICompatibleRuntime) -> tuple[Any, ...]:
    try:
        answer = await runtime.achat(HI, PARAMS)
    except KasetError as exc:
        return type(exc).__name__, exc.message, exc.code, exc.status_code, exc.headers
    return "answer", answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens


JSON = ("Content-Type: application/json",)
CASES: dict[str, Case] = {
    "plain": Case(reply()),
    "chunked": Case(reply(body=chunked(ANSWER), headers=(*JSON, "Transfer-Encoding: chunked"), length=False)),
    "gzip": Case(reply(body=gzip.compress(ANSWER), headers=(*JSON, "Content-Encoding: gzip"))),
    "deflate": Case(reply(body=zlib.compress(ANSWER), headers=(*JSON, "Content-Encoding: deflate"))),
    "raw-deflate": Case(reply(body=zlib.compress(ANSWER)[2:-4], headers=(*JSON, "Content-Encoding: deflate"))),
    "br": Case(reply(body=brotli.compress(ANSWER), headers=(*JSON, "Content-Encoding: br"))),
    "bad-gzip": Case(reply(body=b"not gzip at all", headers=(*JSON, "Content-Encoding: gzip"))),
    "latin-1": Case(reply(body='{"choices": [{"message": {"content": "café"}}]}'.encode("latin-1"),
                          headers=("Content-Type: text/plain; charset=latin-1",))),
    "unknown-charset": Case(reply(headers=("Content-Type: application/json; charset=klingon",))),
    "html": Case(reply(body=b"<html>proxy error</html>", headers=("Content-Type: text/html",))),
    "empty": Case(reply(body=b"")),
    "list": Case(reply(body=b"[1, 2]")),
    "no-choices": Case(reply(body=b'{"id": "x"}')),
    "http-1.0-until-close": Case(reply(version="HTTP/1.0", length=False), close=True),
    "connection-close": Case(reply(headers=(*JSON, "Connection: close")), close=True),
    "early-hints": Case(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n" + reply()),
    "rate-limited": Case(reply("429 Too Many Requests", b'{"error": {"message": "slow down", "type": "rate"}}',
                               (*JSON, "Retry-After: 7"))),
    "bad-key": Case(reply("401 Unauthorized", f'{{"error": {{"message": "bad key {KEY[:8]}"}}}}'.encode())),
    "too-large": Case(reply("413 Payload Too Large", b"too big", ("Content-Type: text/plain",))),
    "broken": Case(reply("500 Internal Server Error", b"oops " + KEY.encode(), ("Content-Type: text/plain",))),
    "reason-only": Case(reply("503 Service Unavailable", b"")),
    "not-found": Case(reply("404 Not Found", b'{"detail": "Not Found"}')),
    "truncated": Case(reply(body=ANSWER)[:-10], close=True),
    "dropped": Case(b"", close=True),
    "garbage": Case(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", close=True),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_the_shortcut_ends_every_call_as_aiohttp_does(name: str, raw_server: RawServer, make: Make) -> None:
    raw_server.cases = CASES
    direct, through_aiohttp = make(raw_server.url(name)), make(raw_server.url(name), shortcut=False)
    before = len(raw_server.requests)
    ours = await outcome(direct)
    theirs = await outcome(through_aiohttp)
    assert ours == theirs
    # The same bytes went on the wire both ways.
    sent = raw_server.requests[before:]
    assert len(sent) == 2 and sent[0] == sent[1], sent
    if name == "plain":
        assert ours == ("answer", "สวัสดี héllo", "length", 3, 5)
        assert sent[0].startswith(b"POST /plain/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        assert f"Authorization: Bearer {KEY}\r\n".encode() in sent[0]
    assert KEY not in str(ours)


async def test_connections_are_kept_alive_and_closed_when_the_reply_says_so(raw_server: RawServer,
                                                                           make: Make) -> None:
    raw_server.cases = CASES
    runtime = make(raw_server.url("plain"))
    for _ in range(5):
        await runtime.achat(HI, PARAMS)
    assert raw_server.connections == 1
    closing = make(raw_server.url("connection-close"))
    for _ in range(3):
        await closing.achat(HI, PARAMS)
    assert raw_server.connections == 4
    # 16 at once: 16 connections, then every one reused.
    await asyncio.gather(*(runtime.achat(HI, PARAMS) for _ in range(16)))
    opened = raw_server.connections
    await asyncio.gather(*(runtime.achat(HI, PARAMS) for _ in range(16)))
    assert raw_server.connections == opened <= 4 + 16


async def test_at_most_limit_connections_and_idle_ones_expire(raw_server: RawServer, make: Make,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw_server.cases = {"slow": Case(reply(), delay_s=0.05)}
    monkeypatch.setattr(http1, "LIMIT", 2)
    runtime = make(raw_server.url("slow"))
    answers = await asyncio.gather(*(runtime.achat(HI, PARAMS) for _ in range(6)))
    assert {a.text for a in answers} == {"สวัสดี héllo"} and raw_server.connections == 2
    monkeypatch.setattr(http1, "KEEPALIVE_S", 0.0)
    await asyncio.sleep(0.01)
    await runtime.achat(HI, PARAMS)
    assert raw_server.connections == 3  # the idle ones were too old: a new connection


async def test_a_connection_the_server_closed_while_idle_is_not_reused(raw_server: RawServer, make: Make) -> None:
    raw_server.cases = {"plain": Case(reply()), "once": Case(reply(), close=True)}
    runtime = make(raw_server.url("once"))
    await runtime.achat(HI, PARAMS)  # the server closes after answering, though the reply did not say so
    await asyncio.sleep(0.05)
    assert (await runtime.achat(HI, PARAMS)).text == "สวัสดี héllo" and raw_server.connections == 2


async def test_a_redirect_is_followed_through_aiohttp(raw_server: RawServer, make: Make) -> None:
    raw_server.cases = {**CASES, "moved": Case(reply("307 Temporary Redirect", b"",
                                                     (f"Location: http://127.0.0.1:{raw_server.port}/plain/v1/"
                                                      "chat/completions",)))}
    runtime = make(raw_server.url("moved"))
    assert (await runtime.achat(HI, PARAMS)).text == "สวัสดี héllo"
    paths = [r.split(b" ", 2)[1] for r in raw_server.requests]
    # Once by the shortcut, once by aiohttp, which followed the Location with the same POST.
    assert paths == [b"/moved/v1/chat/completions", b"/moved/v1/chat/completions", b"/plain/v1/chat/completions"]


async def test_cookies_go_to_the_sessions_jar_and_aiohttp_sends_them(raw_server: RawServer, make: Make) -> None:
    raw_server.cases = {"cookie": Case(reply(headers=(*JSON, "Set-Cookie: lb=replica-2; Path=/")))}
    runtime = make(raw_server.url("cookie", host="localhost"))  # the jar keeps no cookie of an IP address
    await runtime.achat(HI, PARAMS)
    assert b"Cookie:" not in raw_server.requests[0]
    await runtime.achat(HI, PARAMS)
    assert b"\r\nCookie: lb=replica-2\r\n" in raw_server.requests[1]


async def test_unreachable_slow_and_cancelled_calls(raw_server: RawServer, make: Make) -> None:
    raw_server.cases = {"slow": Case(reply(), delay_s=2.0)}
    unreachable = await outcome(make(f"http://127.0.0.1:{free_port()}/v1"))
    assert unreachable[0] == "UpstreamError" and "could not be reached (ClientConnectorError)" in unreachable[1]
    assert unreachable[2] == "upstream_unreachable"
    with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s"):
        await make(raw_server.url("slow"), timeout_s=0.3).achat(HI, PARAMS)
    # A call cancelled mid-reply leaves no half-read connection behind to be reused.
    runtime = make(raw_server.url("slow"))
    task = asyncio.ensure_future(runtime.achat(HI, PARAMS))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pool = runtime._pools[asyncio.get_running_loop()]
    assert pool._open == 0 and not any(pool._idle.values())


async def test_a_header_with_a_control_character_is_refused_as_aiohttp_refuses_it(raw_server: RawServer,
                                                                                make: Make) -> None:
    raw_server.cases = CASES
    errors = []
    for shortcut in (True, False):
        runtime = make(raw_server.url("plain"), shortcut=shortcut)
        runtime._api_key = "sk-evil\r\nX-Injected: 1"
        with pytest.raises(ValueError) as caught:
            await runtime.achat(HI, PARAMS)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and raw_server.requests == []


async def test_https_and_proxies_stay_with_aiohttp(make: Make) -> None:
    assert make("https://api.example.com/v1")._direct is False
    assert make("http://vllm:8000/v1", trust_env=True)._direct is False
    assert make("http://vllm:8000/v1")._direct is True


async def test_unload_closes_the_kept_alive_connections(raw_server: RawServer, make: Make) -> None:
    raw_server.cases = CASES
    runtime = make(raw_server.url("plain"))
    await runtime.achat(HI, PARAMS)
    pool = runtime._pools[asyncio.get_running_loop()]
    (connection,) = pool._idle[("127.0.0.1", raw_server.port)]
    runtime.unload()
    await asyncio.sleep(0.05)
    assert connection.lost and runtime._pools == {}
    with pytest.raises(ModelUnavailable, match="not loaded"):
        await runtime.achat(HI, PARAMS)
