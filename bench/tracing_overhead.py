"""What OpenTelemetry tracing (kaset.tracing) costs the gateway per request, in-process.

Two real gateways in this process (`create_app`, echo model, auth and the request log on):
one without tracing (no OTEL_* variable: the default), one with `OTEL_EXPORTER_OTLP_ENDPOINT`
set, exporting OTLP HTTP/protobuf to a receiver in a child process. A chat completion is
sent as an ASGI call, with no HTTP in between, N times per round; rounds alternate between
the two gateways. With tracing on each round ends with a flush of the round's spans, so the
export (encoding, the HTTP post) counts too. CPU time (all threads of this process) is the
steadier figure on a busy machine; wall time is shown beside it.

Also: `inject()` per call with no span current (tracing off: what proxy.py and provider.py pay)
and with one. Target: the gateway's own cost stays well under 1 ms per request.

    .venv/bin/python bench/tracing_overhead.py [--rounds 5] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PYTHON, free_port, median

# The receiver: answers each export 200 and counts the spans it got (printed on stdin EOF).
SINK = r"""
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
spans = [0]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        export = ExportTraceServiceRequest()
        export.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        spans[0] += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
print(spans[0], flush=True)
"""

BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "The farmer plants rice."}]}).encode()


class Gateway:
    def __init__(self, traced: bool) -> None:
        from kaset.app import create_app
        from kaset.config import Settings

        data = Path(tempfile.mkdtemp(prefix="kaset-tracing-bench-"))
        self.keys: list[str] = []
        self.app = create_app(Settings(data_dir=data, models_dir=data / "models", models=["echo"], redis_url=None,
                                       database_url=None, jwt_secret=None), announce_key=self.keys.append)
        assert (self.app.state.tracing is not None) == traced
        self.statuses: set[int] = set()

    def scope(self) -> dict[str, Any]:
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
                "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                            (b"authorization", f"Bearer {self.keys[0]}".encode()),
                            (b"content-length", str(len(BODY)).encode())]}

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.statuses.add(message["status"])

    async def round(self, requests: int) -> tuple[float, float]:
        """(wall µs, CPU µs) per request."""
        scopes = [self.scope() for _ in range(requests)]
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        for scope in scopes:
            await self.app(scope, self.receive, self.send)
        tracing = self.app.state.tracing
        if tracing is not None:
            tracing.provider.force_flush()
        return ((time.perf_counter() - started) / requests * 1e6,
                (time.process_time() - cpu_started) / requests * 1e6)


def _inject_ns(calls: int) -> float:
    from kaset.tracing import inject

    headers: dict[str, str] = {}
    started = time.perf_counter()
    for _ in range(calls):
        inject(headers)
    return (time.perf_counter() - started) / calls * 1e9


async def measure(port: int, rounds: int, requests: int, warmup: int) -> dict[str, Any]:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    off = Gateway(traced=False)
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    # Room for a whole round: a span dropped from a full queue would cost less than a real one.
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(requests + warmup + 1)
    on = Gateway(traced=True)

    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    async with off.app.router.lifespan_context(off.app), on.app.router.lifespan_context(on.app):
        for gateway in (off, on):
            assert gateway.keys  # announced during start-up
            await asyncio.sleep(0.5)  # echo loads in the background
            await gateway.round(warmup)
        for n in range(rounds):
            order = [("off", off), ("on", on)] if n % 2 == 0 else [("on", on), ("off", off)]
            for name, gateway in order:
                results[name].append(await gateway.round(requests))
        inject_off = _inject_ns(200_000)
        inject_on: list[float] = []
        from kaset.tracing import TracingMiddleware

        async def measure_inject(scope: Any, receive: Any, send: Any) -> None:
            inject_on.append(_inject_ns(20_000))

        tracing = on.app.state.tracing
        await TracingMiddleware(measure_inject, tracing)({"type": "http", "method": "GET", "path": "/", "headers": []},
                                                         on.receive, on.send)
    assert off.statuses == {200} and on.statuses == {200}, (off.statuses, on.statuses)
    return {"results": results, "inject_off": inject_off, "inject_on": inject_on[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per gateway (default 5)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="warmup requests per gateway (default 300)")
    args = parser.parse_args()

    port = free_port()
    sink = subprocess.Popen([PYTHON, "-c", SINK, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sink.stdin is not None and sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    try:
        measured = asyncio.run(measure(port, args.rounds, args.requests, args.warmup))
    finally:
        sink.stdin.close()
        exported = sink.stdout.readline().strip()
        sink.wait()
    results = measured["results"]
    inject_off, inject_on = measured["inject_off"], measured["inject_on"]

    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{args.rounds} rounds x {args.requests} chat completions per gateway, alternating; median µs/request")
    print("                     wall      CPU")
    for name in ("off", "on"):
        rows = results[name]
        print(f"tracing {name:4}     {median([r[0] for r in rows]):8.1f} {median([r[1] for r in rows]):8.1f}")
    added_wall = [a[0] - b[0] for a, b in zip(results["on"], results["off"], strict=True)]
    added_cpu = [a[1] - b[1] for a, b in zip(results["on"], results["off"], strict=True)]
    print(f"added by tracing {median(added_wall):8.1f} {median(added_cpu):8.1f}   "
          f"(CPU by round: {', '.join(f'{a:.0f}' for a in added_cpu)})")
    print(f"inject(), off    {inject_off:8.0f} ns/call")
    print(f"inject(), on     {inject_on:8.0f} ns/call")
    expected = args.rounds * args.requests + args.warmup + 1
    print(f"spans exported   {exported:>8} of {expected}")


if __name__ == "__main__":
    main()
