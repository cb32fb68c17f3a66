"""The plain-HTTP shortcut of `ProviderClient._post_json`: one JSON POST on a kept-alive connection.

A chat call that does not stream is one small POST and one small JSON reply. Sent through an
aiohttp `ClientSession` it costs the gateway's event loop 140-190 µs of CPU on the benchmark
machine; written straight onto a kept-alive connection and read with httptools' parser (uvicorn's,
installed with it) about 45 µs (docs/benchmarks.md, "Provider models", 2026-12-07): a quarter of
what the gateway spends on the whole request. This module is that shortcut, for `http://`
upstreams (vLLM, Ollama, another Kaset in the cluster), and it does what aiohttp does there:

- the request is aiohttp's, byte for byte: the request line, the headers in aiohttp's order
  (Host, the caller's, Accept, Accept-Encoding, User-Agent, Content-Length, Content-Type) and
  the body the caller encoded with `json.dumps`, as aiohttp's `json=` does
  (tests/runtimes/test_provider_http1.py compares the two);
- the reply is read as aiohttp reads it: chunked or not, gzip, deflate or br as advertised, and
  `json()` decodes the text with the Content-Type's charset (else UTF-8), an empty body being None;
- connections are kept alive per event loop, at most `LIMIT` open (aiohttp's connector's
  limit, further calls wait for one), an idle one dropped after `KEEPALIVE_S` (its
  keepalive_timeout) or as soon as the server closes it, and one whose reply says
  `Connection: close` (or is HTTP/1.0) not reused;
- failures are aiohttp's exceptions (ClientConnectorError, ServerDisconnectedError,
  ClientPayloadError, ClientResponseError), and timeouts TimeoutError, so `UpstreamErrorMapping`
  maps them the same.

The caller keeps aiohttp for the rest: https (aiohttp's TLS and certificates), proxies
(`trust_env`), streams, other methods, and a session that holds cookies (Set-Cookie headers
here go into that session's jar, which then takes over). A 3xx reply raises `Redirected`: the call
is sent again through aiohttp, which follows the redirect as it always did.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
import socket
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import httptools
from aiohttp.client_reqrep import ClientRequest, ConnectionKey
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

try:  # the module aiohttp decodes br with, when it advertises br
    import brotlicffi as brotli
except ImportError:  # pragma: no cover - depends on the installed extras
    try:
        import brotli
    except ImportError:
        brotli = None

LIMIT = 100  # aiohttp TCPConnector's default limit of open connections
KEEPALIVE_S = 15.0  # aiohttp TCPConnector's default keepalive_timeout
# aiohttp's automatic headers, after the caller's: Accept, Accept-Encoding, then User-Agent.
AUTO_HEADERS: dict[str, str] = {**{str(k): v for k, v in ClientRequest.DEFAULT_HEADERS.items()},
                                "User-Agent": SERVER_SOFTWARE}
# Control characters aiohttp refuses in a header (all but TAB), and its words for it.
_FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FORBIDDEN_MESSAGE = "Forbidden control character detected in headers. Potential header injection attack."
_DNS_ERROR = getattr(aiohttp, "ClientConnectorDNSError", aiohttp.ClientConnectorError)  # aiohttp >= 3.10


class Redirected(Exception):
    """The upstream answered 3xx: send the call through aiohttp, which follows redirects."""


@dataclass
class Reply:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        """The body as aiohttp's `response.json(content_type=None)` reads it; ValueError if not JSON."""
        stripped = self.body.strip()
        if not stripped:
            return None
        return json.loads(stripped.decode(_charset(self.headers.get("Content-Type", ""))))


@dataclass
class _Target:
    """What a URL needs on the wire, worked out once per URL."""

    url: URL
    key: tuple[str, int]
    connection_key: ConnectionKey  # for aiohttp's connection errors
    request_line: bytes
    host_header: str


@dataclass
class _Exchange:
    """One reply being read."""

    waiter: asyncio.Future[None]
    reason: list[bytes] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    status: int = 0
    headers_done: bool = False
    keep_alive: bool = False  # what the reply's headers allow (httptools forgets once the message is complete)
    until_eof: bool = False  # neither Content-Length nor chunked: the body ends with the connection


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.lost = False
        self.counted = True  # among the pool's open connections, until it is discarded
        self.idle_since = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        exchange = self.exchange
        if exchange is None or exchange.waiter.done():
            return
        if exchange.headers_done and exchange.until_eof:
            exchange.waiter.set_result(None)  # the body ran to the end of the connection
        elif exchange.headers_done:
            exchange.waiter.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))
        else:
            exchange.waiter.set_exception(aiohttp.ServerDisconnectedError())

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    # --- httptools callbacks --------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        if self.exchange is not None:
            self.exchange.reason.append(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        exchange.status = self.parser.get_status_code()
        exchange.headers_done = True
        exchange.keep_alive = self.parser.should_keep_alive()
        names = {name.lower() for name, _ in exchange.headers}
        exchange.until_eof = ("content-length" not in names and "transfer-encoding" not in names
                              and exchange.status not in (204, 304))

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.chunks.append(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or exchange.waiter.done():
            return
        if 100 <= exchange.status < 200:  # an informational reply (103 Early Hints...): the real one follows
            exchange.reason.clear()
            exchange.headers.clear()
            exchange.chunks.clear()
            exchange.status, exchange.headers_done = 0, False
            return
        exchange.waiter.set_result(None)

    # --- use ------------------------------------------------------------------------------------

    def _fail(self, exc: httptools.HttpParserError) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.waiter.done():
            exchange.waiter.set_exception(exc)
        self.close()

    def reusable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class KeepAlivePool:
    """The kept-alive connections of one event loop, by host and port. Touched from its loop only."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, total_s: float | None,
                   connect_s: float | None) -> Reply:
        """POST `body` (JSON) to an http:// URL and read the whole reply, within `total_s`."""
        target = self._target(url)
        async with asyncio.timeout(total_s):
            connection = await self._acquire(target, connect_s)
            loop = asyncio.get_running_loop()
            exchange = _Exchange(loop.create_future())
            connection.exchange = exchange
            try:
                assert connection.transport is not None
                connection.transport.write(self._head(target, headers, len(body)) + body)
                await exchange.waiter
            except httptools.HttpParserError as exc:
                self._discard(connection)
                raise _bad_reply(target, headers, exc) from None
            except BaseException:
                self._discard(connection)  # a reply may still be on its way: not reusable
                raise
            connection.exchange = None
            if exchange.keep_alive and connection.reusable() and not self._closed:
                connection.idle_since = loop.time()
                self._idle.setdefault(target.key, []).append(connection)
                self._wake()
            else:
                self._discard(connection)
        reply = Reply(exchange.status, b"".join(exchange.reason).decode("latin-1"), CIMultiDict(exchange.headers),
                      b"".join(exchange.chunks))
        if 300 <= reply.status < 400 and "Location" in reply.headers:
            raise Redirected(reply.headers["Location"])
        reply.body = _decoded(reply.body, reply.headers.get("Content-Encoding", ""))
        return reply

    def close(self) -> None:
        """Close every idle connection; those in use close when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                self._discard(connection)

    # --- connections ----------------------------------------------------------------------------

    async def _acquire(self, target: _Target, connect_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            idle = self._idle.get(target.key)
            while idle:
                connection = idle.pop()
                if connection.reusable() and loop.time() - connection.idle_since <= KEEPALIVE_S:
                    return connection
                self._discard(connection)
            if self._open < LIMIT:
                break
            self._drop_dead()
            if self._open < LIMIT:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)
                raise
        self._open += 1
        try:
            async with asyncio.timeout(connect_s):
                _, connection = await loop.create_connection(_Connection, *target.key)
        except socket.gaierror as exc:
            self._closed_one()
            raise _DNS_ERROR(target.connection_key, exc) from None
        except OSError as exc:
            self._closed_one()
            raise aiohttp.ClientConnectorError(target.connection_key, exc) from None
        except BaseException:
            self._closed_one()
            raise
        if self._closed:
            connection.close()
            self._closed_one()
            raise aiohttp.ServerDisconnectedError("the runtime closed its connections")
        return connection

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        if connection.counted:
            connection.counted = False
            self._closed_one()

    def _drop_dead(self) -> None:
        """Forget idle connections the servers have closed, whatever their host."""
        for key, connections in list(self._idle.items()):
            alive = [c for c in connections if c.reusable()]
            for connection in connections:
                if not connection.reusable():
                    self._discard(connection)
            self._idle[key] = alive

    def _closed_one(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- the wire -------------------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parsed = URL(url)
            if parsed.scheme != "http" or not parsed.raw_host:
                raise ValueError(f"not a plain http:// URL: {url}")
            port = parsed.port or 80
            host_header = parsed.host_port_subcomponent or parsed.raw_host
            line = f"POST {parsed.raw_path_qs} HTTP/1.1\r\n".encode("latin-1")
            key = ConnectionKey(parsed.raw_host, port, False, True, None, None, None)
            target = _Target(parsed, (parsed.raw_host, port), key, line, host_header)
            self._targets[url] = target
        return target

    @staticmethod
    def _head(target: _Target, headers: Mapping[str, str], length: int) -> bytes:
        """The request line and headers. `headers` are the caller's own (the key, traceparent):
        none of Host, Content-Type, Content-Length, which this sets."""
        given = {name.lower() for name in headers}
        lines = [f"Host: {target.host_header}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines += [f"{name}: {value}\r\n" for name, value in AUTO_HEADERS.items() if name.lower() not in given]
        lines.append(f"Content-Length: {length}\r\nContent-Type: application/json\r\n\r\n")
        for name, value in headers.items():
            if _FORBIDDEN_IN_HEADER.search(name) or _FORBIDDEN_IN_HEADER.search(value):
                raise ValueError(_FORBIDDEN_MESSAGE)  # as aiohttp refuses it, before sending anything
        return target.request_line + "".join(lines).encode("utf-8")


def _bad_reply(target: _Target, headers: Mapping[str, str], exc: Exception) -> aiohttp.ClientResponseError:
    """A reply httptools cannot parse, as aiohttp reports one."""
    info = aiohttp.RequestInfo(target.url, "POST", CIMultiDictProxy(CIMultiDict(headers)), target.url)
    return aiohttp.ClientResponseError(info, (), status=400, message=str(exc))


def _decoded(body: bytes, encoding: str) -> bytes:
    """The body without its Content-Encoding, as aiohttp decodes it (others are left as they are)."""
    encoding = encoding.strip().lower()
    if not body or encoding not in ("gzip", "deflate", "br"):
        return body
    try:
        if encoding == "br":
            if brotli is None:
                return body
            return bytes(brotli.decompress(body))
        # Some servers send raw deflate data under "deflate"; aiohttp takes it too.
        raw_deflate = encoding == "deflate" and body[0] & 0xF != 8
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip"
                                          else -zlib.MAX_WBITS if raw_deflate else zlib.MAX_WBITS)
        decoded = decompressor.decompress(body) + decompressor.flush()
    except Exception as exc:  # zlib.error, brotli.error
        raise aiohttp.ClientPayloadError(f"Can not decode content-encoding: {encoding}") from exc
    if encoding == "deflate" and not decompressor.eof:
        raise aiohttp.ClientPayloadError("Can not decode content-encoding: deflate")
    return decoded


def _charset(content_type: str) -> str:
    """The charset aiohttp's `get_encoding` picks: the Content-Type's when Python knows it, else UTF-8."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            with contextlib.suppress(LookupError, ValueError):
                return codecs.lookup(value.strip().strip('"').lower()).name
    return "utf-8"
